"""Run summaries and lineage indexes for fast paged queries (issue 16).

`run_metric_finals` holds each run's final value per metric key (the value at the largest step of the run's
latest attempt that logged any; NaN stored as NULL), backfilled here from `metrics` and kept up to date by the
store in the same transaction as metric logging; its (key, value, run_id) index makes sorting and filtering
runs by a metric an index scan. The edge tables get (digest, run_id, role) indexes in place of the plain
digest ones, so "what consumed X" and "what made X" are index-only lookups (by run, the primary keys serve);
(kind|status, created_at) indexes let filtered listings walk in order.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: Union[str, None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# The final row per (run, key) of each run's latest attempt: largest step first (a null step last), then the
# row logged last; the same rule as store.metrics.select_final_metrics.
BACKFILL = """
INSERT INTO run_metric_finals (run_id, key, attempt, step, value)
SELECT run_id, key, attempt, step, {value}
FROM (
    SELECT m.run_id, m.key, m.attempt, m.step, m.value,
           row_number() OVER (PARTITION BY m.run_id, m.key
                              ORDER BY CASE WHEN m.step IS NULL THEN 1 ELSE 0 END, m.step DESC, m.id DESC) AS rank
    FROM metrics m
    JOIN (SELECT run_id, max(attempt) AS attempt FROM metrics GROUP BY run_id) latest
      ON latest.run_id = m.run_id AND latest.attempt = m.attempt
) ranked
WHERE rank = 1
"""

# Filtered listings, newest first, walk these in order instead of sorting every match.
LISTING_INDEXES = (("ix_runs_kind_created_at", "runs", ["kind", "created_at", "id"]),
                   ("ix_runs_status_created_at", "runs", ["status", "created_at", "id"]),
                   ("ix_artifacts_kind_created_at", "artifacts", ["kind", "created_at", "digest"]))


def upgrade() -> None:
    op.create_table(
        "run_metric_finals",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_metric_finals_run_id_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "key", name=op.f("pk_run_metric_finals")),
    )
    op.create_index("ix_run_metric_finals_key_value", "run_metric_finals", ["key", "value", "run_id"])
    dialect = op.get_bind().dialect.name
    op.execute(BACKFILL.format(value="NULLIF(value, 'NaN'::float8)" if dialect == "postgresql" else "value"))
    for table in ("run_inputs", "run_outputs"):
        op.drop_index(f"ix_{table}_digest", table_name=table)
        op.create_index(f"ix_{table}_digest_run_id", table, ["digest", "run_id", "role"])
    for name, table, columns in LISTING_INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in LISTING_INDEXES:
        op.drop_index(name, table_name=table)
    for table in ("run_inputs", "run_outputs"):
        op.drop_index(f"ix_{table}_digest_run_id", table_name=table)
        op.create_index(f"ix_{table}_digest", table, ["digest"])
    op.drop_index("ix_run_metric_finals_key_value", table_name="run_metric_finals")
    op.drop_table("run_metric_finals")
