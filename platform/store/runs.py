"""Run rows: create, look up, list, and change status by atomic compare-and-set (with run events)."""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, cast, func, insert, select, update
from sqlalchemy import String as SAString
from sqlalchemy.exc import IntegrityError

from ..config import default_lease_s
from ..errors import BitsmithError, NotFoundError, StoreError, UsageError
from .engine import Database, dialect_insert, read, write
from .leases import lease_owner, lease_values
from .metrics import insert_metrics, select_final_metrics
from .records import (CANCELLED, QUEUED, RUN_STATUSES, RUNNING, SUCCEEDED, TERMINAL_STATUSES, TRANSITIONS,
                      RunArtifactEdge, RunEventRecord, RunRecord, new_id)
from .schema import artifacts_t, run_events_t, run_inputs_t, run_outputs_t, runs_t, sweeps_t, utcnow

_HEX = re.compile(r"^[0-9a-f]+$")
# Columns `transition(**fields)` may set (id, kind, spec, hashes, status and created_at never change).
UPDATABLE_FIELDS = frozenset({
    "name", "environment", "tags", "executor", "host", "pid", "attempt", "max_retries", "cache_hit_of",
    "cancel_requested", "error", "traceback", "log_path", "started_at", "finished_at", "lease_owner",
    "heartbeat_at", "lease_expires_at",
})


class IllegalTransition(StoreError):
    """A status change that records.TRANSITIONS forbids, or a compare-and-set lost to another writer."""


def run_from_row(row: Row | Mapping[str, Any]) -> RunRecord:
    m = row._mapping if isinstance(row, Row) else row
    return RunRecord(
        id=m["id"], kind=m["kind"], name=m["name"], status=m["status"], spec=m["spec"], spec_hash=m["spec_hash"],
        cache_key=m["cache_key"], seed=m["seed"], code_version=m["code_version"] or {},
        environment=m["environment"] or {}, tags=tuple(m["tags"] or ()), executor=m["executor"], host=m["host"],
        pid=m["pid"], attempt=m["attempt"], max_retries=m["max_retries"], cache_hit_of=m["cache_hit_of"],
        sweep_id=m["sweep_id"], cancel_requested=bool(m["cancel_requested"]), error=m["error"],
        traceback=m["traceback"], log_path=m["log_path"], created_at=m["created_at"], started_at=m["started_at"],
        finished_at=m["finished_at"], lease_owner=m.get("lease_owner"), heartbeat_at=m.get("heartbeat_at"),
        lease_expires_at=m.get("lease_expires_at"), joins=m.get("joins"), priority=m.get("priority") or 0,
    )


def _event(run_id: str, from_status: str | None, to_status: str, attempt: int, message: str | None,
           at: datetime) -> dict[str, Any]:
    return {"run_id": run_id, "at": at, "from_status": from_status, "to_status": to_status, "attempt": attempt,
            "message": message}


def create_run(db: Database, *, kind: str, name: str | None, spec: dict[str, Any], spec_hash: str, cache_key: str,
               seed: int, code_version: dict[str, Any], tags: Iterable[str] = (), executor: str | None = None,
               max_retries: int = 0, inputs: Mapping[str, str] | None = None, sweep_id: str | None = None,
               cache_hit_of: str | None = None, status: str = QUEUED, run_id: str | None = None,
               message: str | None = None, join_inflight: bool = False, priority: int = 0,
               to_queue: bool = False) -> RunRecord:
    """Insert a run, its input edges (role -> digest) and its first run event in one transaction.

    With `join_inflight`, a queued run whose cache key an in-flight (queued or running) run already has joins
    it (`joins`): its executor waits for that run and becomes its cache hit (or runs itself if it failed).

    A queued run gets this process as its dispatcher, with a lease (`BITSMITH_LEASE_S`) on the database's
    clock: whoever runs it takes that over (`store.hold_dispatch`); if nobody does, it becomes an orphan that
    `bitsmith runs recover` adopts. With `to_queue`, a queued run gets no dispatcher lease: it waits in the
    store's queue (ordered by `priority`, then age) for the store's dispatcher (`scheduler.dispatcher`).
    """
    values, edges, event = _new_run_rows(
        kind=kind, name=name, spec=spec, spec_hash=spec_hash, cache_key=cache_key, seed=seed,
        code_version=code_version, tags=tags, executor=executor, max_retries=max_retries, inputs=inputs,
        sweep_id=sweep_id, cache_hit_of=cache_hit_of, status=status, run_id=run_id, message=message)
    values["priority"] = priority
    if status == QUEUED and not to_queue:
        values.update(lease_values(lease_owner(), default_lease_s()))

    def body(conn: Connection) -> RunRecord:
        joins = _inflight_original(conn, db, cache_key) if join_inflight and status == QUEUED else None
        if joins is not None:
            values["joins"] = joins
            event["message"] = message or f"joins in-flight identical run {joins}"
        _insert_run(conn, values, edges, event)
        return run_from_row(conn.execute(select(runs_t).where(runs_t.c.id == values["id"])).one())

    try:
        return write(db, body)
    except IntegrityError as exc:
        raise _integrity_error(db, f"run {values['id']}", exc, inputs or {}, sweep_id, cache_hit_of) from None


def record_cache_hit(db: Database, original_id: str, *, kind: str, name: str | None, spec: dict[str, Any],
                     spec_hash: str, cache_key: str, seed: int, code_version: dict[str, Any],
                     tags: Iterable[str] = (), executor: str | None = None, max_retries: int = 0,
                     inputs: Mapping[str, str] | None = None, sweep_id: str | None = None,
                     run_id: str | None = None) -> RunRecord:
    """Record a succeeded run that reuses succeeded run `original_id`: the run, its inputs, the original's
    outputs and final metrics (as attempt 0), all in one transaction, so no half-written cache hit remains.

    Raises `IllegalTransition` (and records nothing) when the original is no longer succeeded.
    """
    values, edges, event = _new_run_rows(
        kind=kind, name=name, spec=spec, spec_hash=spec_hash, cache_key=cache_key, seed=seed,
        code_version=code_version, tags=tags, executor=executor, max_retries=max_retries, inputs=inputs,
        sweep_id=sweep_id, cache_hit_of=original_id, status=SUCCEEDED, run_id=run_id, message=None)

    def body(conn: Connection) -> None:
        _lock_succeeded(conn, original_id)
        _insert_run(conn, values, edges, event)
        _copy_results(db, conn, original_id, values["id"])

    try:
        write(db, body)
    except IntegrityError as exc:
        raise _integrity_error(db, f"run {values['id']}", exc, inputs or {}, sweep_id, original_id) from None
    return run_from_row(values)


def record_join_hit(db: Database, run_id: str, original_id: str) -> RunRecord:
    """Queued run `run_id` waited for the identical run `original_id`, which succeeded: make it a succeeded
    cache hit of it (the original's outputs and final metrics), in one transaction, compare-and-set on queued."""
    def body(conn: Connection) -> RunRecord:
        _lock_succeeded(conn, original_id)
        now = utcnow()
        result = conn.execute(update(runs_t).where(runs_t.c.id == run_id, runs_t.c.status == QUEUED).values(
            status=SUCCEEDED, cache_hit_of=original_id, finished_at=now, lease_expires_at=None))
        if result.rowcount != 1:
            raise IllegalTransition(f"run {run_id}: no longer queued; expected it queued to record it as a cache "
                                    f"hit of {original_id}")
        _copy_results(db, conn, original_id, run_id)
        conn.execute(insert(run_events_t), _event(run_id, QUEUED, SUCCEEDED, 0,
                                                  f"cache hit of {original_id} (joined it while it ran)", now))
        return run_from_row(conn.execute(select(runs_t).where(runs_t.c.id == run_id)).one())

    return write(db, body)


def _lock_succeeded(conn: Connection, original_id: str) -> None:
    status = conn.execute(select(runs_t.c.status).where(runs_t.c.id == original_id).with_for_update()).scalar()
    if status != SUCCEEDED:
        raise IllegalTransition(f"run {original_id}: {status or 'gone'}; expected a succeeded run to reuse")


def _copy_results(db: Database, conn: Connection, original_id: str, run_id: str) -> None:
    """Give `run_id` the outputs and final metrics (as attempt 0) of `original_id`, inside `conn`'s transaction."""
    outputs = {role: digest for role, digest in conn.execute(
        select(run_outputs_t.c.role, run_outputs_t.c.digest).where(run_outputs_t.c.run_id == original_id))}
    upsert_edges(db, conn, run_outputs_t, run_id, outputs)
    finals = select_final_metrics(conn, [original_id])[original_id]
    insert_metrics(conn, run_id, 0, [(key, None, value) for key, value in finals.items()])


def _inflight_original(conn: Connection, db: Database, cache_key: str) -> str | None:
    """The oldest queued or running run with `cache_key` that runs itself (no cache hit, no join), or None.

    Takes a lock on the key first (SQLite: the write transaction's lock; PostgreSQL: an advisory lock), so
    of two identical submissions at once the second sees the first.
    """
    if not db.is_sqlite:
        conn.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(cache_key, 0))))
    return conn.execute(select(runs_t.c.id).where(
        runs_t.c.cache_key == cache_key, runs_t.c.status.in_((QUEUED, RUNNING)), runs_t.c.cache_hit_of.is_(None),
        runs_t.c.joins.is_(None)).order_by(runs_t.c.created_at, runs_t.c.id).limit(1)).scalar()


def _new_run_rows(*, kind: str, name: str | None, spec: dict[str, Any], spec_hash: str, cache_key: str, seed: int,
                  code_version: dict[str, Any], tags: Iterable[str], executor: str | None, max_retries: int,
                  inputs: Mapping[str, str] | None, sweep_id: str | None, cache_hit_of: str | None, status: str,
                  run_id: str | None, message: str | None) -> tuple[dict[str, Any], list[dict], dict[str, Any]]:
    """The run row, its input edge rows and its first event row of a new run."""
    if status not in RUN_STATUSES:
        raise UsageError(f"create_run: status {status!r}; expected one of {', '.join(RUN_STATUSES)}")
    now = utcnow()
    values = {
        "id": run_id or new_id(), "kind": kind, "name": name, "status": status, "spec": spec,
        "spec_hash": spec_hash, "cache_key": cache_key, "seed": seed, "code_version": code_version,
        "environment": {}, "tags": list(tags), "executor": executor, "host": None, "pid": None, "attempt": 0,
        "max_retries": max_retries, "cache_hit_of": cache_hit_of, "sweep_id": sweep_id, "cancel_requested": False,
        "error": None, "traceback": None, "log_path": None, "created_at": now,
        "started_at": now if status == RUNNING else None,
        "finished_at": now if status in TERMINAL_STATUSES else None,
    }
    edges = [{"run_id": values["id"], "role": role, "digest": digest} for role, digest in (inputs or {}).items()]
    event = _event(values["id"], None, status, 0, message or ("cache hit of " + cache_hit_of if cache_hit_of else None),
                   now)
    return values, edges, event


def _insert_run(conn: Connection, values: dict[str, Any], edges: list[dict], event: dict[str, Any]) -> None:
    conn.execute(insert(runs_t).values(**values))  # .values(): a queued run's lease columns are SQL (db_clock)
    if edges:
        conn.execute(insert(run_inputs_t), edges)
    conn.execute(insert(run_events_t), event)


def _integrity_error(db: Database, where: str, exc: IntegrityError, digests: Mapping[str, str],
                     sweep_id: str | None = None, cache_hit_of: str | None = None) -> BitsmithError:
    missing = []
    with db.transaction() as conn:
        for role, digest in digests.items():
            if conn.execute(select(artifacts_t.c.digest).where(artifacts_t.c.digest == digest)).first() is None:
                missing.append(f"{role}={digest}")
        if sweep_id and conn.execute(select(sweeps_t.c.id).where(sweeps_t.c.id == sweep_id)).first() is None:
            missing.append(f"sweep {sweep_id}")
        if cache_hit_of and conn.execute(select(runs_t.c.id).where(runs_t.c.id == cache_hit_of)).first() is None:
            missing.append(f"run {cache_hit_of}")
    if missing:
        return NotFoundError(f"{where}: unknown {', '.join(missing)}; expected registered artifacts "
                             "(and an existing sweep/run)", hint="bitsmith artifacts list")
    return StoreError(f"{where}: rejected by the database ({str(exc.orig).splitlines()[0]}); "
                      "expected a new id and unique roles")


def _check_hex(ref: str, what: str) -> str:
    ref = (ref or "").strip().lower()
    if not ref or not _HEX.match(ref):
        raise NotFoundError(f"{what} {ref!r}: not a run id; expected a run id or a unique prefix of one (hex digits)",
                            hint="bitsmith runs list")
    return ref


def resolve_run_id(conn: Connection, ref: str) -> str:
    """The full id of the run `ref` (a full id or a unique prefix) names."""
    ref = _check_hex(ref, "run")
    ids = [r[0] for r in conn.execute(select(runs_t.c.id).where(runs_t.c.id.startswith(ref, autoescape=True))
                                      .order_by(runs_t.c.id.desc()).limit(11))]
    if not ids:
        raise NotFoundError(f"run {ref!r}: no run with that id or id prefix; expected an id from `bitsmith runs list`",
                            hint="bitsmith runs list")
    if len(ids) > 1 and ref not in ids:
        shown = ", ".join(ids[:10]) + (", ..." if len(ids) > 10 else "")
        raise UsageError(f"run {ref!r}: prefix matches {len(ids) if len(ids) <= 10 else 'more than 10'} runs "
                         f"({shown}); expected a longer prefix", hint="bitsmith runs list")
    return ref if ref in ids else ids[0]


def get_run(db: Database, ref: str) -> RunRecord:
    """The run with id `ref`, or with a unique id prefix `ref`."""
    def body(conn: Connection) -> RunRecord:
        row = conn.execute(select(runs_t).where(runs_t.c.id == resolve_run_id(conn, ref))).one()
        return run_from_row(row)
    return read(db, body)


def list_runs(db: Database, *, kind: str | None = None, status: str | None = None, tag: str | None = None,
              sweep_id: str | None = None, cache_key: str | None = None,
              limit: int | None = 50) -> list[RunRecord]:
    """Runs, newest first, filtered by kind, status, tag, sweep and cache key."""
    query = select(runs_t).order_by(runs_t.c.created_at.desc(), runs_t.c.id.desc())
    if kind is not None:
        query = query.where(runs_t.c.kind == kind)
    if status is not None:
        if status not in RUN_STATUSES:
            raise UsageError(f"status {status!r}: unknown; expected one of {', '.join(RUN_STATUSES)}")
        query = query.where(runs_t.c.status == status)
    if tag is not None:  # tags are a JSON list of strings: match the quoted string in its text form
        query = query.where(cast(runs_t.c.tags, SAString).contains(json.dumps(tag), autoescape=True))
    if sweep_id is not None:
        query = query.where(runs_t.c.sweep_id == sweep_id)
    if cache_key is not None:
        query = query.where(runs_t.c.cache_key == cache_key)
    if limit is not None:
        query = query.limit(limit)
    with db.transaction() as conn:
        return [run_from_row(r) for r in conn.execute(query)]


def transition(db: Database, run_id: str, to_status: str, *, message: str | None = None,
               expected_from: str | Iterable[str] | None = None, expected_attempt: int | None = None,
               **fields: Any) -> RunRecord:
    """Move run `run_id` to `to_status` (updating `fields`) by compare-and-set, logging a run event.

    Raises `IllegalTransition` (a `StoreError`) when records.TRANSITIONS forbids the change, when the
    run's status is not in `expected_from`, when its attempt is not `expected_attempt` (the fence that keeps
    an attempt which lost its lease from recording anything), or when another writer changed it first.
    `started_at` / `finished_at` default to now when entering RUNNING / a terminal status; re-queueing
    clears `finished_at`; leaving RUNNING releases the lease (`lease_expires_at` = None).
    """
    if to_status not in RUN_STATUSES:
        raise UsageError(f"transition: status {to_status!r}; expected one of {', '.join(RUN_STATUSES)}")
    unknown = set(fields) - UPDATABLE_FIELDS
    if unknown:
        raise UsageError(f"transition: unknown field(s) {', '.join(sorted(unknown))}; expected some of "
                         f"{', '.join(sorted(UPDATABLE_FIELDS))}")
    expected = {expected_from} if isinstance(expected_from, str) else set(expected_from or ())
    if "tags" in fields:
        fields["tags"] = list(fields["tags"])

    def body(conn: Connection) -> RunRecord:
        row = conn.execute(select(runs_t.c.status, runs_t.c.attempt, runs_t.c.started_at)
                           .where(runs_t.c.id == run_id).with_for_update()).first()
        if row is None:
            raise NotFoundError(f"run {run_id!r}: no such run; expected an existing run id", hint="bitsmith runs list")
        current, attempt, started_at = row
        if expected and current not in expected:
            raise IllegalTransition(f"run {run_id}: status is {current}; expected {' or '.join(sorted(expected))} "
                                    f"to move it to {to_status}")
        if expected_attempt is not None and attempt != expected_attempt:
            raise IllegalTransition(f"run {run_id}: attempt {attempt} holds it; expected attempt {expected_attempt} "
                                    f"to move it to {to_status} (that attempt lost its lease)")
        if to_status not in TRANSITIONS[current]:
            allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (it is final)"
            raise IllegalTransition(f"run {run_id}: cannot go from {current} to {to_status}; "
                                    f"expected one of: {allowed}")
        now = utcnow()
        values = dict(fields, status=to_status)
        if to_status == RUNNING and "started_at" not in values and (started_at is None or current != RUNNING):
            values["started_at"] = now
        if to_status in TERMINAL_STATUSES and "finished_at" not in values:
            values["finished_at"] = now
        if to_status == QUEUED and "finished_at" not in values:  # re-queued: not finished any more
            values["finished_at"] = None
        if to_status != RUNNING:
            values.setdefault("lease_expires_at", None)
        result = conn.execute(update(runs_t).where(and_(runs_t.c.id == run_id, runs_t.c.status == current,
                                                        runs_t.c.attempt == attempt))
                              .values(**values))
        if result.rowcount != 1:  # another writer moved it between our read and write
            raise IllegalTransition(f"run {run_id}: status changed concurrently while moving {current} -> "
                                    f"{to_status}; expected no other writer")
        conn.execute(insert(run_events_t),
                     _event(run_id, current, to_status, values.get("attempt", attempt), message, now))
        return run_from_row(conn.execute(select(runs_t).where(runs_t.c.id == run_id)).one())

    return write(db, body)


def request_cancel(db: Database, run_id: str) -> RunRecord:
    """Ask run `run_id` to stop: a queued run is cancelled at once, a running one gets the flag its
    executor watches. A finished run is refused with a UsageError."""
    def body(conn: Connection) -> RunRecord:
        full_id = resolve_run_id(conn, run_id)
        row = conn.execute(select(runs_t.c.status, runs_t.c.attempt).where(runs_t.c.id == full_id)
                           .with_for_update()).one()
        current, attempt = row
        if current in TERMINAL_STATUSES:
            raise UsageError(f"run {full_id}: already {current}; expected a queued or running run to cancel")
        now = utcnow()
        values: dict[str, Any] = {"cancel_requested": True}
        if current == QUEUED:
            values.update(status=CANCELLED, finished_at=now)
        result = conn.execute(update(runs_t).where(and_(runs_t.c.id == full_id, runs_t.c.status == current))
                              .values(**values))
        if result.rowcount != 1:
            raise IllegalTransition(f"run {full_id}: status changed concurrently while cancelling; expected no "
                                    "other writer (try again)")
        conn.execute(insert(run_events_t), _event(full_id, current, values.get("status", current), attempt,
                                                  "cancel requested", now))
        return run_from_row(conn.execute(select(runs_t).where(runs_t.c.id == full_id)).one())

    return write(db, body)


def find_cached_run(db: Database, cache_key: str) -> RunRecord | None:
    """The newest succeeded run with `cache_key` that is not itself a cache hit, or None."""
    query = (select(runs_t).where(runs_t.c.cache_key == cache_key, runs_t.c.status == SUCCEEDED,
                                  runs_t.c.cache_hit_of.is_(None))
             .order_by(runs_t.c.created_at.desc(), runs_t.c.id.desc()).limit(1))
    with db.transaction() as conn:
        row = conn.execute(query).first()
    return None if row is None else run_from_row(row)


def run_events(db: Database, run_id: str) -> list[RunEventRecord]:
    """The run's status history, oldest first."""
    t = run_events_t
    with db.transaction() as conn:
        rows = conn.execute(select(t.c.run_id, t.c.at, t.c.from_status, t.c.to_status, t.c.attempt, t.c.message)
                            .where(t.c.run_id == run_id).order_by(t.c.id))
        return [RunEventRecord(*r) for r in rows]


def add_run_outputs(db: Database, run_id: str, outputs: Mapping[str, str]) -> None:
    """Record that run `run_id` produced each artifact (role -> digest); the artifacts must be registered.

    Idempotent: a role recorded again (a retried attempt) points at the digest given last.
    """
    _add_edges(db, run_outputs_t, run_id, outputs, "outputs")


def add_run_inputs(db: Database, run_id: str, inputs: Mapping[str, str]) -> None:
    """Record artifacts a running job consumed beyond its spec's inputs (e.g. a reused derived cache)."""
    _add_edges(db, run_inputs_t, run_id, inputs, "inputs")


def upsert_edges(db: Database, conn: Connection, table: Any, run_id: str, edges: Mapping[str, str]) -> None:
    """Insert role -> digest edges of `run_id` inside `conn`'s transaction; a role given again is repointed."""
    if not edges:
        return
    rows = [{"run_id": run_id, "role": role, "digest": digest} for role, digest in edges.items()]
    upsert = dialect_insert(db.dialect)(table)
    conn.execute(upsert.on_conflict_do_update(index_elements=["run_id", "role"],
                                              set_={"digest": upsert.excluded.digest}), rows)


def _add_edges(db: Database, table: Any, run_id: str, outputs: Mapping[str, str], what: str) -> None:
    if not outputs:
        return
    try:
        write(db, lambda conn: upsert_edges(db, conn, table, run_id, outputs))
    except IntegrityError as exc:
        raise _integrity_error(db, f"run {run_id} {what}", exc, outputs) from None


def _edges(db: Database, table: Any, direction: str, column: str, value: str) -> list[RunArtifactEdge]:
    with db.transaction() as conn:
        rows = conn.execute(select(table.c.run_id, table.c.digest, table.c.role)
                            .where(table.c[column] == value).order_by(table.c.role, table.c.run_id))
        return [RunArtifactEdge(run_id=r, digest=d, role=role, direction=direction) for r, d, role in rows]


def run_inputs(db: Database, run_id: str) -> list[RunArtifactEdge]:
    return _edges(db, run_inputs_t, "input", "run_id", run_id)


def run_outputs(db: Database, run_id: str) -> list[RunArtifactEdge]:
    return _edges(db, run_outputs_t, "output", "run_id", run_id)
