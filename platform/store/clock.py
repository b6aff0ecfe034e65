"""The database's clock: lease stamps and expiry checks use it, never the clock of the machine that writes.

A node whose clock is skewed (by more than a lease) would otherwise stamp leases that others take for
expired, or take live leases for expired itself. `db_clock(offset_s)` is the database's current UTC time
plus `offset_s` seconds as a SQL expression, stored and compared exactly as `UTCDateTime` columns are:
`timestamptz` on PostgreSQL, `YYYY-MM-DD HH:MM:SS.ffffff` text on SQLite (millisecond resolution there).
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import Float, bindparam
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from .schema import UTCDateTime


class db_clock(FunctionElement):
    """The database's now() + `offset_s` seconds (a SQL expression typed as `UTCDateTime`)."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_clock"

    def __init__(self, offset_s: float = 0.0):
        super().__init__(bindparam(None, float(offset_s), type_=Float()))


@compiles(db_clock, "sqlite")
def _sqlite_clock(element: db_clock, compiler: Any, **kw: Any) -> str:
    offset = compiler.process(element.clauses, **kw)
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now', ({offset}) || ' seconds') || '000')"


@compiles(db_clock, "postgresql")
def _postgres_clock(element: db_clock, compiler: Any, **kw: Any) -> str:
    offset = compiler.process(element.clauses, **kw)
    return f"(now() + ({offset}) * interval '1 second')"
