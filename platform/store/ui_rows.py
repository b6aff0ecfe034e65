"""Store reads and writes the web interface needs beyond the paged queries: a run's tags, the sweeps list."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, func, select, update

from .engine import Database, write
from .schema import runs_t, sweeps_t


def edit_run_tags(db: Database, run_id: str, edit: Callable[[list[str]], list[str]]) -> list[str]:
    """Replace a run's tags with `edit(current)` in one transaction (row locked); returns the new tags."""

    def body(conn: Connection) -> list[str]:
        current = conn.execute(select(runs_t.c.tags).where(runs_t.c.id == run_id).with_for_update()).scalar()
        tags = edit(list(current or []))
        conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(tags=tags))
        return tags

    return write(db, body)


def sweeps_with_child_counts(db: Database, *, limit: int, offset: int) -> list[Any]:
    """Sweeps newest first (at most `limit + 1` rows from `offset`), each with its number of child runs."""
    children = (select(runs_t.c.sweep_id, func.count().label("n")).where(runs_t.c.sweep_id.is_not(None))
                .group_by(runs_t.c.sweep_id).subquery())
    query = (select(sweeps_t.c.id, sweeps_t.c.name, sweeps_t.c.status, sweeps_t.c.created_at, children.c.n)
             .outerjoin(children, children.c.sweep_id == sweeps_t.c.id)
             .order_by(sweeps_t.c.created_at.desc(), sweeps_t.c.id.desc()).offset(offset).limit(limit + 1))
    with db.transaction() as conn:
        return list(conn.execute(query).all())
