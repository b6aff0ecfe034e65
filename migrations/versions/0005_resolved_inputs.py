"""Names and inputs: sweeps keep their resolved input digests; plain artifact names keep every registration.

`artifact_names` is filled from the existing rows' names (those without `/`, which now belong to run
outputs), in the order the artifacts were first registered.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: Union[str, None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("resolved_inputs", sa.JSON(), nullable=True))
    op.create_table(
        "artifact_names",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["digest"], ["artifacts.digest"], name=op.f("fk_artifact_names_digest_artifacts"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifact_names")),
    )
    op.create_index(op.f("ix_artifact_names_digest"), "artifact_names", ["digest"], unique=False)
    op.create_index("ix_artifact_names_name_id", "artifact_names", ["name", "id"], unique=False)
    op.execute("INSERT INTO artifact_names (name, digest, registered_at) SELECT name, digest, created_at "
               "FROM artifacts WHERE name IS NOT NULL AND name NOT LIKE '%/%' ORDER BY created_at, digest")


def downgrade() -> None:
    op.drop_index("ix_artifact_names_name_id", table_name="artifact_names")
    op.drop_index(op.f("ix_artifact_names_digest"), table_name="artifact_names")
    op.drop_table("artifact_names")
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("resolved_inputs")
