"""Attempt-scoped writes: metrics carry their attempt; a queued run may join an identical in-flight run.

Existing metric rows get their run's current attempt (the rows of earlier attempts cannot be told apart
any more; reads then show them as one curve, as before this revision).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("metrics") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=True))
    op.execute("UPDATE metrics SET attempt = (SELECT runs.attempt FROM runs WHERE runs.id = metrics.run_id)")
    with op.batch_alter_table("metrics") as batch:
        batch.alter_column("attempt", existing_type=sa.Integer(), nullable=False)
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("joins", sa.String(length=32), nullable=True))
        batch.create_foreign_key(batch.f("fk_runs_joins_runs"), "runs", ["joins"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint(batch.f("fk_runs_joins_runs"), type_="foreignkey")
        batch.drop_column("joins")
    with op.batch_alter_table("metrics") as batch:
        batch.drop_column("attempt")
