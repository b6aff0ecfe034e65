"""Sweep rows (minimal for now): create, look up, set status."""
from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from ..errors import NotFoundError, UsageError
from .engine import Database, write
from .records import QUEUED, SweepRecord, new_id
from .schema import runs_t, sweeps_t, utcnow

_HEX = re.compile(r"^[0-9a-f]+$")
SWEEP_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def _sweep(conn: Connection, row: Row) -> SweepRecord:
    run_ids = tuple(r[0] for r in conn.execute(select(runs_t.c.id).where(runs_t.c.sweep_id == row.id)
                                               .order_by(runs_t.c.created_at, runs_t.c.id)))
    return SweepRecord(id=row.id, name=row.name, spec=row.spec, status=row.status, created_at=row.created_at,
                       run_ids=run_ids, resolved_inputs=row.resolved_inputs)


def create_sweep(db: Database, *, name: str | None, spec: dict[str, Any], status: str = QUEUED,
                 sweep_id: str | None = None, resolved_inputs: dict[str, str] | None = None) -> SweepRecord:
    """Record a sweep; `resolved_inputs` (input ref -> digest) pins what its children's refs mean."""
    values = {"id": sweep_id or new_id(), "name": name, "spec": spec, "status": status, "created_at": utcnow(),
              "resolved_inputs": resolved_inputs}
    write(db, lambda conn: conn.execute(insert(sweeps_t), values))
    return SweepRecord(**values)


def _resolve(conn: Connection, ref: str) -> Row:
    ref = (ref or "").strip().lower()
    if not ref or not _HEX.match(ref):
        raise NotFoundError(f"sweep {ref!r}: not a sweep id; expected a sweep id or a unique prefix (hex digits)",
                            hint="bitsmith sweep list")
    rows = conn.execute(select(sweeps_t).where(sweeps_t.c.id.startswith(ref)).order_by(sweeps_t.c.id).limit(11)).all()
    exact = [r for r in rows if r.id == ref]
    if exact:
        return exact[0]
    if not rows:
        raise NotFoundError(f"sweep {ref!r}: no sweep with that id or prefix; expected an existing sweep id",
                            hint="bitsmith sweep list")
    if len(rows) > 1:
        raise UsageError(f"sweep {ref!r}: prefix matches {len(rows)} sweeps ({', '.join(r.id for r in rows[:10])}); "
                         "expected a longer prefix", hint="bitsmith sweep list")
    return rows[0]


def get_sweep(db: Database, ref: str) -> SweepRecord:
    """The sweep with id (or unique id prefix) `ref`, with the ids of its runs."""
    with db.transaction() as conn:
        return _sweep(conn, _resolve(conn, ref))


def set_sweep_status(db: Database, sweep_id: str, status: str) -> SweepRecord:
    if status not in SWEEP_STATUSES:
        raise UsageError(f"sweep {sweep_id}: status {status!r}; expected one of {', '.join(SWEEP_STATUSES)}")

    def body(conn: Connection) -> SweepRecord:
        row = _resolve(conn, sweep_id)
        conn.execute(update(sweeps_t).where(sweeps_t.c.id == row.id).values(status=status))
        return _sweep(conn, conn.execute(select(sweeps_t).where(sweeps_t.c.id == row.id)).one())

    return write(db, body)
