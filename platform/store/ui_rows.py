"""Store writes the web interface needs beyond the paged queries (store.queries): a run's tags."""
from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, select, update

from .engine import Database, write
from .schema import runs_t


def edit_run_tags(db: Database, run_id: str, edit: Callable[[list[str]], list[str]]) -> list[str]:
    """Replace a run's tags with `edit(current)` in one transaction (row locked); returns the new tags."""

    def body(conn: Connection) -> list[str]:
        current = conn.execute(select(runs_t.c.tags).where(runs_t.c.id == run_id).with_for_update()).scalar()
        tags = edit(list(current or []))
        conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(tags=tags))
        return tags

    return write(db, body)

