"""Metrics: batched inserts, reads, and each run's final value per key.

Every row carries the attempt that logged it; reads of a run's curve and final values use only the rows of
the run's latest attempt that logged any, so a retried run shows one curve, not two interleaved. Each run's
final values are kept in `run_metric_finals`, updated in the same transaction as the rows they summarise
(`insert_metrics`), so sorting and filtering runs by a final metric is an index scan.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from sqlalchemy import Connection, and_, delete, func, insert, select

from ..errors import NotFoundError
from .engine import Database, dialect_insert, write
from .records import MetricRecord
from .schema import metric_finals_t, metrics_t, runs_t, utcnow


def metric_rows(run_id: str, attempt: int, batch: Iterable[tuple[str, int | None, float]]) -> list[dict]:
    """Rows of the metrics table for (key, step, value) triples of run `run_id`'s `attempt`, logged now."""
    now = utcnow()
    return [{"run_id": run_id, "attempt": attempt, "key": key, "step": None if step is None else int(step),
             "value": float(value), "logged_at": now} for key, step, value in batch]


def insert_metrics(conn: Connection, run_id: str, attempt: int, batch: Iterable[tuple[str, int | None, float]]) -> int:
    """Insert (key, step, value) rows of `attempt` inside `conn`'s transaction (one executemany); the count."""
    rows = metric_rows(run_id, attempt, batch)
    if rows:
        conn.execute(insert(metrics_t), rows)
        update_finals(conn, run_id, attempt, rows)
    return len(rows)


def _replaces(step: int | None, old_step: int | None) -> bool:
    """Whether a row logged later at `step` becomes the final value over one at `old_step` (same attempt):
    a larger or equal step wins, any step beats no step, and a null step only replaces a null step."""
    if step is None:
        return old_step is None
    return old_step is None or step >= old_step


_ABSENT = object()


def update_finals(conn: Connection, run_id: str, attempt: int, rows: list[dict]) -> None:
    """Fold metric `rows` of `attempt` (just inserted, in logging order) into the run's final values.

    A later attempt than the summarised one replaces the run's finals (reads use the latest attempt only);
    an earlier one changes nothing. The run row is locked first (PostgreSQL), so one run's loggers take turns.
    """
    f = metric_finals_t
    conn.execute(select(runs_t.c.id).where(runs_t.c.id == run_id).with_for_update())
    current = conn.execute(select(func.max(f.c.attempt)).where(f.c.run_id == run_id)).scalar()
    if current is not None and attempt < current:
        return
    known: dict[str, int | None] = {}
    if current is not None and attempt > current:
        conn.execute(delete(f).where(f.c.run_id == run_id))
    elif current is not None:
        keys = sorted({row["key"] for row in rows})
        for start in range(0, len(keys), 500):
            known.update(conn.execute(select(f.c.key, f.c.step).where(f.c.run_id == run_id,
                                                                       f.c.key.in_(keys[start:start + 500]))).all())
    best: dict[str, dict] = {}
    for row in rows:
        old = best[row["key"]]["step"] if row["key"] in best else known.get(row["key"], _ABSENT)
        if old is _ABSENT or _replaces(row["step"], old):
            best[row["key"]] = row
    if not best:
        return
    values = [{"run_id": run_id, "key": key, "attempt": attempt, "step": row["step"],
               "value": None if math.isnan(row["value"]) else row["value"]} for key, row in best.items()]
    upsert = dialect_insert(conn.dialect.name)(f)
    conn.execute(upsert.on_conflict_do_update(index_elements=["run_id", "key"], set_={
        "attempt": upsert.excluded.attempt, "step": upsert.excluded.step, "value": upsert.excluded.value}), values)


def log_metrics(db: Database, run_id: str, batch: Iterable[tuple[str, int | None, float]]) -> int:
    """Insert (key, step, value) rows for run `run_id`, under its current attempt, in one transaction.

    Not fenced: a running attempt logs through `store.log_attempt_metrics`, which checks it still holds the run.
    """
    batch = list(batch)

    def body(conn: Connection) -> int:
        attempt = conn.execute(select(runs_t.c.attempt).where(runs_t.c.id == run_id)).scalar()
        if attempt is None:
            raise NotFoundError(f"run {run_id!r}: no such run to log metrics for; expected an existing run id",
                                hint="bitsmith runs list")
        return insert_metrics(conn, run_id, attempt, batch)

    return write(db, body) if batch else 0


def _value(value: float | None) -> float:
    return math.nan if value is None else value  # SQLite stores NaN as NULL


def _latest_attempt_rows(run_ids: Sequence[str]):
    """The metric rows of `run_ids`, each run's restricted to its latest attempt that logged any."""
    t = metrics_t
    latest = (select(t.c.run_id, func.max(t.c.attempt).label("attempt")).where(t.c.run_id.in_(list(run_ids)))
              .group_by(t.c.run_id).subquery())
    return select(t).join(latest, and_(t.c.run_id == latest.c.run_id, t.c.attempt == latest.c.attempt)).subquery()


def get_metrics(db: Database, run_id: str, key: str | None = None) -> list[MetricRecord]:
    """The run's metric rows (its latest attempt's) ordered by key, then step (null step first), then logging order."""
    t = _latest_attempt_rows([run_id])
    query = select(t.c.run_id, t.c.key, t.c.step, t.c.value, t.c.attempt)
    if key is not None:
        query = query.where(t.c.key == key)
    query = query.order_by(t.c.key, t.c.step.asc().nulls_first(), t.c.id)
    with db.transaction() as conn:
        return [MetricRecord(run_id=r, key=k, step=s, value=_value(v), attempt=a)
                for r, k, s, v, a in conn.execute(query)]


def final_metrics(db: Database, run_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per run, per key (of the run's latest attempt): the value at the largest step (or the null-step value
    when a key has no steps); the last one logged wins ties. Runs without metrics map to {}.

    Read from the summary table (`run_metric_finals`), which `compute_final_metrics` recomputes from the rows.
    """
    with db.transaction() as conn:
        return select_final_metrics(conn, run_ids)


def select_final_metrics(conn: Connection, run_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """`final_metrics` inside `conn`'s transaction (from the summary table)."""
    result: dict[str, dict[str, float]] = {run_id: {} for run_id in run_ids}
    f = metric_finals_t
    ids = list(result)
    for start in range(0, len(ids), 500):
        query = select(f.c.run_id, f.c.key, f.c.value).where(f.c.run_id.in_(ids[start:start + 500]))
        for run_id, key, value in conn.execute(query):
            result[run_id][key] = _value(value)
    return result


def compute_final_metrics(conn: Connection, run_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """`final_metrics` computed from the metric rows themselves (the definition the summary table keeps)."""
    result: dict[str, dict[str, float]] = {run_id: {} for run_id in run_ids}
    if not run_ids:
        return result
    t = _latest_attempt_rows(run_ids)
    rank = func.row_number().over(partition_by=(t.c.run_id, t.c.key),
                                  order_by=(t.c.step.desc().nulls_last(), t.c.id.desc())).label("rank")
    ranked = select(t.c.run_id, t.c.key, t.c.value, rank).subquery()
    query = select(ranked.c.run_id, ranked.c.key, ranked.c.value).where(ranked.c.rank == 1)
    for run_id, key, value in conn.execute(query):
        result[run_id][key] = _value(value)
    return result
