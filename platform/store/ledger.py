"""The durable job ledger: leases and heartbeats of running attempts, fenced completion, recovery.

A running attempt holds its run's lease (`lease_owner`, `heartbeat_at`, `lease_expires_at`) and renews it
from a heartbeat thread. When a worker or its node dies, the heartbeats stop and the lease runs out; the
run is then re-queued for another attempt while its `retries` last, else failed with the reason. Every
change that ends or repeats an attempt is compare-and-set on (status, attempt), and every write an attempt
makes while it runs (metrics, checkpoints, derived artifacts, extra inputs) first checks, inside the write's
own transaction and under the run row's lock, that the attempt still holds the run: an attempt that lost its
lease can no longer record outputs, metrics or a status, so nothing is recorded twice.

A queued run has an owner with a lease too: its dispatcher (the process that created or re-queued it, then
the runner or driver that will run it, which renews it while the run waits). A queued run whose dispatcher
is gone (lease run out, or its process dead on this host) is an orphan: `adopt_orphans` takes it over so
that it is dispatched again. All lease times are the database's clock (`store.clock`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, insert, or_, select, update

from ..config import default_lease_s
from .clock import db_clock
from .engine import Database, write
from .leases import lease_owner, lease_values, owner_is_gone
from .metrics import insert_metrics
from .records import FAILED, QUEUED, RUNNING, SUCCEEDED, RunRecord
from .runs import IllegalTransition, run_from_row, transition, upsert_edges
from .schema import run_events_t, run_inputs_t, run_outputs_t, runs_t, utcnow

REQUEUED, FAILED_OUT, ADOPTED = "requeued", "failed", "adopted"


@dataclass(frozen=True)
class Recovery:
    """What happened to a run whose attempt (or dispatcher) was lost: re-queued for a retry, failed for good,
    or (queued) adopted by a new dispatcher."""

    run: RunRecord
    action: str            # REQUEUED | FAILED_OUT | ADOPTED
    reason: str


def attempt_is_dead(db: Database, run: RunRecord) -> bool:
    """True when running `run`'s lease ran out by the database's clock, or its owner's process is gone."""
    return bool(expired_runs(db, [run.id])) or owner_is_gone(run.lease_owner)


def renew_lease(db: Database, run_id: str, *, attempt: int, owner: str, lease_s: float) -> bool:
    """Extend the lease of `attempt`; False when that attempt no longer holds the run (it must stop)."""
    values = lease_values(owner, lease_s)

    def body(conn: Connection) -> bool:
        result = conn.execute(update(runs_t).where(and_(
            runs_t.c.id == run_id, runs_t.c.status == RUNNING, runs_t.c.attempt == attempt,
            runs_t.c.lease_owner == owner)).values(**values))
        return result.rowcount == 1

    return write(db, body)


def hold_attempt(conn: Connection, run_id: str, attempt: int) -> None:
    """Inside a write transaction: lock run `run_id`'s row and check that `attempt` holds it, running.

    Raises `IllegalTransition` when it does not (the attempt lost its lease); the caller's writes in the same
    transaction are then rolled back. (SQLite: the write transaction already holds the database's write lock.)
    """
    row = conn.execute(select(runs_t.c.status, runs_t.c.attempt).where(runs_t.c.id == run_id)
                       .with_for_update()).first()
    if row is None or row.status != RUNNING or row.attempt != attempt:
        now = "gone" if row is None else f"now {row.status}, attempt {row.attempt}"
        raise IllegalTransition(f"run {run_id}: attempt {attempt} no longer holds it ({now}); expected it running "
                                f"as attempt {attempt}")


def log_attempt_metrics(db: Database, run_id: str, *, attempt: int,
                        batch: Iterable[tuple[str, int | None, float]]) -> int:
    """Insert `attempt`'s (key, step, value) rows, fenced on the attempt holding the run; the count."""
    batch = list(batch)

    def body(conn: Connection) -> int:
        hold_attempt(conn, run_id, attempt)
        return insert_metrics(conn, run_id, attempt, batch)

    return write(db, body) if batch else 0


def add_attempt_outputs(db: Database, run_id: str, *, attempt: int, outputs: Mapping[str, str]) -> None:
    """Record role -> digest outputs of `attempt` (checkpoints, derived artifacts), fenced on the attempt."""
    _add_attempt_edges(db, run_outputs_t, run_id, attempt, outputs)


def add_attempt_inputs(db: Database, run_id: str, *, attempt: int, inputs: Mapping[str, str]) -> None:
    """Record artifacts `attempt` consumed beyond its spec's inputs (a reused derived artifact), fenced."""
    _add_attempt_edges(db, run_inputs_t, run_id, attempt, inputs)


def _add_attempt_edges(db: Database, table: Any, run_id: str, attempt: int, edges: Mapping[str, str]) -> None:
    def body(conn: Connection) -> None:
        hold_attempt(conn, run_id, attempt)
        upsert_edges(db, conn, table, run_id, edges)

    if edges:
        write(db, body)


def complete_run(db: Database, run_id: str, *, attempt: int, outputs: Mapping[str, str],
                 metrics: Iterable[tuple[str, int | None, float]]) -> RunRecord:
    """Record `attempt`'s outputs and final metrics and mark the run succeeded, all in one transaction.

    Raises `IllegalTransition` (and records nothing) when `attempt` no longer holds the run. Output names
    are bound here only: `RUN_NAME/ROLE` means output ROLE of the newest succeeded run named RUN_NAME, read
    from runs and run_outputs (the artifact rows an attempt registers carry no name).
    """
    now = utcnow()
    metrics = list(metrics)

    def body(conn: Connection) -> RunRecord:
        result = conn.execute(update(runs_t).where(and_(runs_t.c.id == run_id, runs_t.c.status == RUNNING,
                                                        runs_t.c.attempt == attempt))
                              .values(status=SUCCEEDED, finished_at=now, lease_expires_at=None))
        if result.rowcount != 1:
            current = conn.execute(select(runs_t.c.status, runs_t.c.attempt).where(runs_t.c.id == run_id)).first()
            raise IllegalTransition(f"run {run_id}: attempt {attempt} no longer holds it (now {current[0]}, "
                                    f"attempt {current[1]}); expected it running as attempt {attempt}")
        upsert_edges(db, conn, run_outputs_t, run_id, outputs)
        insert_metrics(conn, run_id, attempt, metrics)
        conn.execute(insert(run_events_t), {"run_id": run_id, "at": now, "from_status": RUNNING,
                                            "to_status": SUCCEEDED, "attempt": attempt, "message": None})
        return run_from_row(conn.execute(select(runs_t).where(runs_t.c.id == run_id)).one())

    return write(db, body)


def retry_or_fail(db: Database, run: RunRecord, reason: str) -> Recovery | None:
    """Attempt `run.attempt` is lost: re-queue the run while retries last, else fail it with `reason`.

    None when the attempt had already ended or another writer recovered it first.
    """
    retries_left = run.max_retries - (run.attempt - 1)
    try:
        if retries_left > 0:  # this process dispatches it again, or its lease runs out and it is an orphan
            message = f"{reason}; re-queued for attempt {run.attempt + 1} of {run.max_retries + 1}"
            new = transition(db, run.id, QUEUED, message=message, expected_from={RUNNING},
                             expected_attempt=run.attempt, **lease_values(lease_owner(), default_lease_s()))
            return Recovery(new, REQUEUED, message)
        message = f"{reason}; retries used up ({run.max_retries})"
        new = transition(db, run.id, FAILED, message=message, error=message, expected_from={RUNNING},
                         expected_attempt=run.attempt)
        return Recovery(new, FAILED_OUT, message)
    except IllegalTransition:
        return None


def expired_runs(db: Database, run_ids: Iterable[str] | None = None, after_s: float = 0.0) -> list[RunRecord]:
    """Running runs whose lease has run out by the database's clock (or will have, `after_s` seconds from now),
    optionally only among `run_ids`."""
    query = select(runs_t).where(runs_t.c.status == RUNNING, runs_t.c.lease_expires_at < db_clock(after_s))
    if run_ids is not None:
        ids = list(run_ids)
        if not ids:
            return []
        query = query.where(runs_t.c.id.in_(ids))
    with db.transaction() as conn:
        return [run_from_row(r) for r in conn.execute(query.order_by(runs_t.c.created_at))]


def recover_expired(db: Database, run_ids: Iterable[str] | None = None, after_s: float = 0.0) -> list[Recovery]:
    """Re-queue or fail every running run whose lease ran out (its worker or node is taken for dead);
    `after_s`: as if that many seconds had passed."""
    recovered = []
    for run in expired_runs(db, run_ids, after_s):
        last = run.heartbeat_at.isoformat(timespec="seconds") if run.heartbeat_at else "never"
        reason = (f"lease expired: no heartbeat from {run.lease_owner or 'its worker'} since {last} "
                  f"(attempt {run.attempt}; the worker or its node died)")
        outcome = retry_or_fail(db, run, reason)
        if outcome is not None:
            recovered.append(outcome)
    return recovered


def hold_dispatch(db: Database, run_ids: Iterable[str], *, owner: str, lease_s: float) -> int:
    """Make `owner` the dispatcher of those of `run_ids` still queued, for `lease_s` seconds; the count."""
    ids = list(run_ids)

    def body(conn: Connection) -> int:
        result = conn.execute(update(runs_t).where(runs_t.c.id.in_(ids), runs_t.c.status == QUEUED)
                              .values(**lease_values(owner, lease_s)))
        return result.rowcount

    return write(db, body) if ids else 0


def orphaned_runs(db: Database, run_ids: Iterable[str] | None = None) -> list[RunRecord]:
    """Queued runs whose dispatcher is gone: no lease, a lease run out, or an owner process dead on this host."""
    query = select(runs_t).where(runs_t.c.status == QUEUED)
    if run_ids is not None:
        query = query.where(runs_t.c.id.in_(list(run_ids)))
    lapsed = or_(runs_t.c.lease_expires_at.is_(None), runs_t.c.lease_expires_at < db_clock())
    with db.transaction() as conn:
        rows = [(run_from_row(r), bool(r.lapsed)) for r in conn.execute(
            query.add_columns(lapsed.label("lapsed")).order_by(runs_t.c.created_at))]
    return [run for run, lapsed_ in rows if lapsed_ or owner_is_gone(run.lease_owner)]


def adopt_orphans(db: Database, *, owner: str, lease_s: float,
                  run_ids: Iterable[str] | None = None) -> list[RunRecord]:
    """Make `owner` the dispatcher of every orphaned queued run (compare-and-set on its previous owner, so of
    two adopters one wins); returns the runs adopted, which `owner` must now dispatch."""
    adopted = []
    for run in orphaned_runs(db, run_ids):
        def body(conn: Connection, run: RunRecord = run) -> bool:
            result = conn.execute(update(runs_t).where(
                runs_t.c.id == run.id, runs_t.c.status == QUEUED,
                runs_t.c.lease_owner.is_not_distinct_from(run.lease_owner)).values(**lease_values(owner, lease_s)))
            return result.rowcount == 1

        if write(db, body):
            adopted.append(run)
    return adopted
