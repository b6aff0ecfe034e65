"""Metrics: batched inserts, reads, and each run's final value per key."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from ..errors import NotFoundError
from .engine import Database, write
from .records import MetricRecord
from .schema import metrics_t, utcnow


def metric_rows(run_id: str, batch: Iterable[tuple[str, int | None, float]]) -> list[dict]:
    """Rows of the metrics table for (key, step, value) triples of run `run_id`, logged now."""
    now = utcnow()
    return [{"run_id": run_id, "key": key, "step": None if step is None else int(step), "value": float(value),
             "logged_at": now} for key, step, value in batch]


def log_metrics(db: Database, run_id: str, batch: Iterable[tuple[str, int | None, float]]) -> int:
    """Insert (key, step, value) rows for run `run_id` in one transaction, one executemany; return the count."""
    rows = metric_rows(run_id, batch)
    if not rows:
        return 0
    try:
        write(db, lambda conn: conn.execute(insert(metrics_t), rows))
    except IntegrityError:
        raise NotFoundError(f"run {run_id!r}: no such run to log metrics for; expected an existing run id",
                            hint="bitsmith runs list") from None
    return len(rows)


def _value(value: float | None) -> float:
    return math.nan if value is None else value  # SQLite stores NaN as NULL


def get_metrics(db: Database, run_id: str, key: str | None = None) -> list[MetricRecord]:
    """The run's metric rows ordered by key, then step (null step first), then logging order."""
    t = metrics_t
    query = select(t.c.run_id, t.c.key, t.c.step, t.c.value).where(t.c.run_id == run_id)
    if key is not None:
        query = query.where(t.c.key == key)
    query = query.order_by(t.c.key, t.c.step.asc().nulls_first(), t.c.id)
    with db.transaction() as conn:
        return [MetricRecord(run_id=r, key=k, step=s, value=_value(v)) for r, k, s, v in conn.execute(query)]


def final_metrics(db: Database, run_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per run, per key: the value at the largest step (or the null-step value when a key has no steps);
    the last one logged wins ties. Runs without metrics map to {}."""
    result: dict[str, dict[str, float]] = {run_id: {} for run_id in run_ids}
    if not run_ids:
        return result
    t = metrics_t
    rank = func.row_number().over(partition_by=(t.c.run_id, t.c.key),
                                  order_by=(t.c.step.desc().nulls_last(), t.c.id.desc())).label("rank")
    ranked = select(t.c.run_id, t.c.key, t.c.value, rank).where(t.c.run_id.in_(list(run_ids))).subquery()
    query = select(ranked.c.run_id, ranked.c.key, ranked.c.value).where(ranked.c.rank == 1)
    with db.transaction() as conn:
        for run_id, key, value in conn.execute(query):
            result[run_id][key] = _value(value)
    return result
