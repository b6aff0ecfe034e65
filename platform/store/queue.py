"""The store's job queue: queued runs in dispatch order, the one dispatcher's lease, bulk adoption of the queue.

The queue is the `runs` table itself: queued runs ordered by `priority` (higher first), then age. One
dispatcher per store holds the `dispatchers` row's lease (owner `host:pid`, renewed by its heartbeat, on the
database's clock); a second dispatcher is refused while that lease lives and its process exists. The
dispatcher holds the dispatch lease of every queued run nobody else dispatches (`claim_queue`), so
`runs recover` and `db check` see them as owned, and a run a `--wait` submitter or a detached runner
dispatches itself is left to that process.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import UsageError
from .clock import db_clock
from .engine import Database, write
from .leases import lease_values, owner_is_gone
from .records import QUEUED, RUNNING, DispatcherRecord, RunRecord
from .runs import run_from_row
from .schema import dispatchers_t, run_events_t, run_inputs_t, runs_t

DISPATCHER_NAME = "default"
QUEUE_ORDER = (runs_t.c.priority.desc(), runs_t.c.created_at, runs_t.c.id)


class DispatcherBusy(UsageError):
    """Another live dispatcher holds the store's dispatcher lease."""


def _record(row: Any, alive: bool) -> DispatcherRecord:
    return DispatcherRecord(owner=row.owner, ray_address=row.ray_address, started_at=row.started_at,
                            heartbeat_at=row.heartbeat_at, lease_expires_at=row.lease_expires_at, alive=alive,
                            state=dict(row.state or {}))


def _select_dispatcher() -> Any:
    lapsed = (dispatchers_t.c.lease_expires_at < db_clock()).label("lapsed")
    return select(dispatchers_t, lapsed).where(dispatchers_t.c.name == DISPATCHER_NAME)


def get_dispatcher(db: Database) -> DispatcherRecord | None:
    """The store's dispatcher as last recorded (`alive`: its lease lives and its process is not known dead)."""
    with db.transaction() as conn:
        row = conn.execute(_select_dispatcher()).first()
    if row is None:
        return None
    return _record(row, alive=not row.lapsed and not owner_is_gone(row.owner))


def acquire_dispatcher(db: Database, *, owner: str, lease_s: float, ray_address: str | None) -> DispatcherRecord:
    """Make `owner` the store's dispatcher for `lease_s` seconds; `DispatcherBusy` names a live holder."""
    values = {**lease_values(owner, lease_s), "ray_address": ray_address, "started_at": db_clock(), "state": {}}
    values["owner"] = values.pop("lease_owner")

    def body(conn: Connection) -> None:
        row = conn.execute(_select_dispatcher().with_for_update()).first()
        if row is None:
            conn.execute(insert(dispatchers_t).values(name=DISPATCHER_NAME, **values))
            return
        if row.owner != owner and not row.lapsed and not owner_is_gone(row.owner):
            raise busy_error(row)
        conn.execute(update(dispatchers_t).where(dispatchers_t.c.name == DISPATCHER_NAME,
                                                 dispatchers_t.c.owner == row.owner).values(**values))

    try:
        write(db, body)
    except IntegrityError:  # another dispatcher inserted the row between our read and write
        with db.transaction() as conn:
            raise busy_error(conn.execute(_select_dispatcher()).one()) from None
    record = get_dispatcher(db)
    if record is None or record.owner != owner:
        raise DispatcherBusy("scheduler: another dispatcher took the store's dispatcher lease at the same time; "
                             "expected one dispatcher per store", hint="bitsmith scheduler status")
    return record


def busy_error(row: Any) -> DispatcherBusy:
    beat = row.heartbeat_at.isoformat(timespec="seconds") if row.heartbeat_at else "never"
    return DispatcherBusy(f"scheduler: this store already has a dispatcher, {row.owner} (Ray "
                          f"{row.ray_address or 'embedded'}, last heartbeat {beat}); expected at most one dispatcher "
                          "per store", hint="bitsmith scheduler status   bitsmith scheduler stop")


def renew_dispatcher(db: Database, *, owner: str, lease_s: float, state: dict[str, Any],
                     ray_address: str | None = None) -> bool:
    """Extend `owner`'s dispatcher lease and record its snapshot; False when it no longer holds the lease."""
    values = lease_values(owner, lease_s)
    values.pop("lease_owner")
    values["state"] = state
    if ray_address is not None:
        values["ray_address"] = ray_address

    def body(conn: Connection) -> bool:
        return conn.execute(update(dispatchers_t).where(dispatchers_t.c.name == DISPATCHER_NAME,
                                                        dispatchers_t.c.owner == owner).values(**values)).rowcount == 1

    return write(db, body)


def release_dispatcher(db: Database, *, owner: str) -> None:
    """Give up `owner`'s dispatcher lease (a clean stop); nothing when another holds it."""
    write(db, lambda conn: conn.execute(delete(dispatchers_t).where(dispatchers_t.c.name == DISPATCHER_NAME,
                                                                    dispatchers_t.c.owner == owner)))


def claim_queue(db: Database, *, owner: str, lease_s: float, renew: bool = True) -> int:
    """Make `owner` the dispatcher of every queued run that has none alive (no lease, a lapsed one, a dead owner
    process on this host) and (with `renew`) renew those it holds, in one statement; the number of runs taken."""
    with db.transaction() as conn:
        others = [o for (o,) in conn.execute(select(runs_t.c.lease_owner).distinct().where(
            runs_t.c.status == QUEUED, runs_t.c.lease_owner.is_not(None), runs_t.c.lease_owner != owner))]
    gone = [o for o in others if owner_is_gone(o)]
    free = or_(runs_t.c.lease_owner.is_(None), runs_t.c.lease_expires_at.is_(None),
               runs_t.c.lease_expires_at < db_clock(), runs_t.c.lease_owner == owner if renew else False,
               runs_t.c.lease_owner.in_(gone) if gone else False)

    def body(conn: Connection) -> int:
        return conn.execute(update(runs_t).where(runs_t.c.status == QUEUED, free)
                            .values(**lease_values(owner, lease_s))).rowcount

    return write(db, body)


def queued_runs(db: Database, *, owner: str | None = None, limit: int | None = None) -> list[RunRecord]:
    """Queued runs in dispatch order (priority, then age), optionally only those `owner` dispatches."""
    query = select(runs_t).where(runs_t.c.status == QUEUED).order_by(*QUEUE_ORDER)
    if owner is not None:
        query = query.where(runs_t.c.lease_owner == owner)
    if limit is not None:
        query = query.limit(limit)
    with db.transaction() as conn:
        return [run_from_row(r) for r in conn.execute(query)]


def queue_length(db: Database) -> int:
    with db.transaction() as conn:
        return conn.execute(select(func.count()).select_from(runs_t).where(runs_t.c.status == QUEUED)).scalar_one()


def running_runs(db: Database) -> list[RunRecord]:
    """Every running run (the dispatcher counts their resources as used, whoever runs them)."""
    with db.transaction() as conn:
        return [run_from_row(r) for r in conn.execute(select(runs_t).where(runs_t.c.status == RUNNING))]


def get_runs(db: Database, run_ids: Iterable[str]) -> dict[str, RunRecord]:
    """Run id -> record for the given full ids (missing ones left out), in one query per 500 ids."""
    ids, found = list(run_ids), {}
    with db.transaction() as conn:
        for i in range(0, len(ids), 500):
            for row in conn.execute(select(runs_t).where(runs_t.c.id.in_(ids[i:i + 500]))):
                found[row.id] = run_from_row(row)
    return found


def enqueue_runs(db: Database, runs: list[dict[str, Any]], *, priority: int = 0, join_inflight: bool = True,
                 chunk: int = 1000) -> list[RunRecord]:
    """Insert many queued runs (the keyword arguments of `create_run` each) with no dispatcher lease (they wait for
    the store's dispatcher), `chunk` runs per transaction, each table's rows in one statement. Joining works as in
    `create_run`: a run whose cache key an in-flight run, or an earlier run of this call, already has joins it."""
    from .runs import _new_run_rows

    rows = [_new_run_rows(status=QUEUED, cache_hit_of=None, run_id=None, message=None, **r) for r in runs]
    for values, _, _ in rows:
        values.update(priority=priority, joins=None)
    first_of_key: dict[str, str] = {}

    def insert_part(part: list[tuple[dict, list, dict]]) -> Any:
        def body(conn: Connection) -> None:
            inflight = _inflight_originals(conn, db, {v["cache_key"] for v, _, _ in part}) if join_inflight else {}
            for values, _, event in part:
                joins = first_of_key.get(values["cache_key"]) or inflight.get(values["cache_key"])
                if joins is not None and join_inflight:
                    values["joins"] = joins
                    event["message"] = f"joins in-flight identical run {joins}"
                else:
                    first_of_key.setdefault(values["cache_key"], values["id"])
            conn.execute(insert(runs_t), [values for values, _, _ in part])
            edges = [edge for _, part_edges, _ in part for edge in part_edges]
            if edges:
                conn.execute(insert(run_inputs_t), edges)
            conn.execute(insert(run_events_t), [event for _, _, event in part])
        return body

    for i in range(0, len(rows), chunk):
        write(db, insert_part(rows[i:i + chunk]))
    return [run_from_row(values) for values, _, _ in rows]


def _inflight_originals(conn: Connection, db: Database, keys: set[str]) -> dict[str, str]:
    """Cache key -> the oldest queued or running run with it that runs itself, for those of `keys` that have one
    (PostgreSQL: under each key's advisory lock, as `create_run` takes it)."""
    keys_list, found = sorted(keys), {}
    if not db.is_sqlite:
        for key in keys_list:
            conn.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))
    for i in range(0, len(keys_list), 500):
        query = (select(runs_t.c.cache_key, runs_t.c.id).where(
            runs_t.c.cache_key.in_(keys_list[i:i + 500]), runs_t.c.status.in_((QUEUED, RUNNING)),
            runs_t.c.cache_hit_of.is_(None), runs_t.c.joins.is_(None)).order_by(runs_t.c.created_at.desc(),
                                                                               runs_t.c.id.desc()))
        found.update({key: run_id for key, run_id in conn.execute(query)})  # oldest last: it wins
    return found


def succeeded_keys(db: Database, keys: Iterable[str]) -> set[str]:
    """Those of `keys` some succeeded run has (their submissions may become cache hits)."""
    keys, found = list(keys), set()
    with db.transaction() as conn:
        for i in range(0, len(keys), 500):
            found.update(k for (k,) in conn.execute(select(runs_t.c.cache_key).distinct().where(
                runs_t.c.cache_key.in_(keys[i:i + 500]), runs_t.c.status == "succeeded")))
    return found
