"""Bounded, keyset-paged store queries behind `runs list`, `artifacts find`, `lineage` and the UI's API (and its
sweeps list).

Every list returns a `Page`: at most `limit` rows (1 to MAX_LIMIT) and an opaque `next_cursor` (None on the
last page). A cursor is base64 JSON of the last row's sort key; it is checked against the query it came from,
so a cursor from another sort, order or listing is refused (a UsageError naming --cursor). Pages are keyset
pages: rows inserted while paging never shift the rows after the cursor, so every row that exists throughout
is listed exactly once.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Sequence

from sqlalchemy import ColumnElement, String, and_, cast, exists, func, not_, select

from ..errors import UsageError
from .artifacts import artifact_from_row, where_clause
from .engine import Database
from .lineage import LineagePage, lineage_page
from .paging import MAX_LIMIT, Page, after_cursor, bad_cursor, check_limit, decode_cursor, encode_cursor
from .records import RUN_STATUSES, ArtifactRecord
from .runs import run_from_row
from .schema import artifacts_t, metric_finals_t, runs_t, sweeps_t

RUN_SORTS = ("created_at", "started_at", "finished_at", "name", "kind", "status")
METRIC_PREFIX = "metric:"
METRIC_OPS = ("<=", ">=", "==", "!=", "<", ">")
METRIC_FILTER_FORM = "METRIC OP NUMBER with OP one of < <= > >= == !=, e.g. 'test/token_ppl<50'"
_METRIC_FILTER = re.compile(r"^\s*([^<>=!\s][^<>=!]*?)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")
_OPS = {"<=": "__le__", ">=": "__ge__", "<": "__lt__", ">": "__gt__", "==": "__eq__", "!=": "__ne__"}
_TIME_SORTS = ("created_at", "started_at", "finished_at")
_NULLABLE_SORTS = ("started_at", "finished_at", "name")


# ---------------------------------------------------------------------------------------- runs

def parse_metric_filter(text: str) -> tuple[str, str, float]:
    """`'test/token_ppl<50'` -> ("test/token_ppl", "<", 50.0); a UsageError naming --metric otherwise."""
    match = _METRIC_FILTER.match(text or "")
    if match is None:
        raise UsageError(f"--metric {text!r}: malformed filter; expected {METRIC_FILTER_FORM}")
    key, op, raw = match.groups()
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"--metric {text!r}: {raw!r} is not a number; expected {METRIC_FILTER_FORM}") from None
    if not math.isfinite(value):
        raise UsageError(f"--metric {text!r}: {raw!r} is not a finite number; expected {METRIC_FILTER_FORM}")
    return key, op, value


def _check_metric_filters(filters: Iterable[Any]) -> list[tuple[str, str, float]]:
    checked = []
    for item in filters:
        if isinstance(item, str):
            checked.append(parse_metric_filter(item))
            continue
        try:
            key, op, value = item
            value = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"--metric {item!r}: expected (METRIC, OP, NUMBER) or {METRIC_FILTER_FORM}") from None
        if not isinstance(key, str) or not key or op not in METRIC_OPS or not math.isfinite(value):
            raise UsageError(f"--metric {item!r}: expected {METRIC_FILTER_FORM}")
        checked.append((key, op, value))
    return checked


def _check_sort(sort: str) -> str | None:
    """The metric key of a `metric:KEY` sort, None for a column sort; a UsageError naming --sort otherwise."""
    if sort in RUN_SORTS:
        return None
    if isinstance(sort, str) and sort.startswith(METRIC_PREFIX) and sort[len(METRIC_PREFIX):].strip():
        return sort[len(METRIC_PREFIX):]
    raise UsageError(f"--sort {sort!r}: unknown; expected one of {', '.join(RUN_SORTS)} or metric:KEY "
                     "(e.g. metric:test/token_ppl)")


def _cursor_value(sort: str, value: Any, cursor: str) -> Any:
    """A cursor's sort value as the column's Python type (checked, so a forged cursor is refused, not run)."""
    if value is None:
        if sort in _NULLABLE_SORTS:
            return None
    elif sort in _TIME_SORTS and isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    elif sort.startswith(METRIC_PREFIX) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
    elif sort in ("name", "kind", "status") and isinstance(value, str):
        return value
    raise bad_cursor(cursor, f"its position {value!r} is not a {sort} value")


def list_runs(db: Database, *, kind: str | None = None, status: str | None = None, tag: str | None = None,
              sweep_id: str | None = None, name_contains: str | None = None,
              metric_filters: Sequence[Any] = (), sort: str = "created_at", descending: bool = True,
              limit: int = 50, cursor: str | None = None) -> Page:
    """One page of runs matching every filter, in `sort` order (ties broken by id, in the same direction).

    `sort` is a column (RUN_SORTS; NULLs last) or `metric:KEY`, a run's final value of KEY: then only runs
    with a final KEY (not NaN) are listed, read from the summary table's (key, value) index. `metric_filters`
    are (KEY, OP, NUMBER) or 'KEY OP NUMBER' strings on final values (a run without KEY, or with NaN, fails
    them). `name_contains` matches case-insensitively; `tag` is one of the run's tags.
    """
    check_limit(limit)
    metric_key = _check_sort(sort)
    filters = _check_metric_filters(metric_filters)
    if status is not None and status not in RUN_STATUSES:
        raise UsageError(f"--status {status!r}: unknown; expected one of {', '.join(RUN_STATUSES)}")
    r, f = runs_t, metric_finals_t
    conditions: list[ColumnElement[bool]] = []
    if kind is not None:
        conditions.append(r.c.kind == kind)
    if status is not None:
        conditions.append(r.c.status == status)
    if tag is not None:  # tags are a JSON list of strings: match the quoted string in its text form
        conditions.append(cast(r.c.tags, String).contains(json.dumps(tag), autoescape=True))
    if sweep_id is not None:
        conditions.append(r.c.sweep_id == sweep_id)
    if name_contains:
        conditions.append(r.c.name.icontains(name_contains, autoescape=True))
    if metric_key is not None:
        sort_column, id_column = f.c.value, f.c.run_id
        query = select(r, f.c.value.label("sort_value")).join(f, f.c.run_id == r.c.id).where(
            f.c.key == metric_key, f.c.value.is_not(None))
    else:
        sort_column, id_column = r.c[sort], r.c.id
        query = select(r)
    for key, op, value in filters:
        if key == metric_key:  # on the sorted key: a range on the same index
            conditions.append(getattr(f.c.value, _OPS[op])(value))
        else:
            g = metric_finals_t.alias()
            conditions.append(exists().where(g.c.run_id == r.c.id, g.c.key == key,
                                             getattr(g.c.value, _OPS[op])(value)))
    nullable = metric_key is None and sort in _NULLABLE_SORTS
    if cursor:
        position = decode_cursor(cursor, "runs", s=sort, d=bool(descending))
        if len(position) != 2 or not isinstance(position[1], str):
            raise bad_cursor(cursor, "not a position in a runs listing")
        value = _cursor_value(sort, position[0], cursor)
        conditions.append(after_cursor(sort_column, id_column, value, position[1], bool(descending), nullable))
    order = [sort_column.is_(None)] if nullable else []
    order += [sort_column.desc(), id_column.desc()] if descending else [sort_column.asc(), id_column.asc()]
    query = query.where(and_(*conditions)).order_by(*order).limit(limit + 1)
    with db.transaction() as conn:
        rows = conn.execute(query).all()
    page = [run_from_row(row) for row in rows[:limit]]
    if len(rows) <= limit:
        return Page(page, None)
    last = rows[limit - 1]
    value = last.sort_value if metric_key is not None else getattr(page[-1], sort)
    value = value.isoformat() if isinstance(value, datetime) else value
    return Page(page, encode_cursor({"q": "runs", "s": sort, "d": bool(descending), "k": [value, page[-1].id]}))


# ---------------------------------------------------------------------------------------- artifacts

def find_artifacts(db: Database, *, kind: str | None = None, where: Iterable[str] = (), limit: int = 50,
                   cursor: str | None = None) -> Page:
    """One page of artifacts matching every `FIELD OP VALUE` filter (`artifacts find --where`), newest first
    (ties by digest)."""
    check_limit(limit)
    a = artifacts_t
    conditions = [where_clause(db, expression) for expression in where]
    if kind is not None:
        conditions.append(a.c.kind == kind)
    if cursor:
        position = decode_cursor(cursor, "artifacts")
        if len(position) != 2 or not all(isinstance(p, str) for p in position):
            raise bad_cursor(cursor, "not a position in an artifact listing")
        at = _cursor_value("created_at", position[0], cursor)
        # newest first, then digest ascending: (created_at < at) or (created_at = at and digest > last)
        conditions.append(and_(a.c.created_at <= at, not_(and_(a.c.created_at == at, a.c.digest <= position[1]))))
    query = select(a).where(and_(*conditions)).order_by(a.c.created_at.desc(), a.c.digest).limit(limit + 1)
    with db.transaction() as conn:
        rows = [artifact_from_row(row) for row in conn.execute(query)]
    return _artifact_page(rows, limit)


def _artifact_page(rows: list[ArtifactRecord], limit: int) -> Page:
    if len(rows) <= limit:
        return Page(rows, None)
    last = rows[limit - 1]
    return Page(rows[:limit], encode_cursor({"q": "artifacts", "k": [last.created_at.isoformat(), last.digest]}))


# ---------------------------------------------------------------------------------------- sweeps

@dataclass(frozen=True)
class SweepListing:
    """A row of the sweeps list: the sweep and its number of child runs."""

    id: str
    name: str | None
    status: str
    created_at: datetime
    children: int


def list_sweeps(db: Database, *, limit: int = 50, cursor: str | None = None) -> Page:
    """One page of sweeps, newest first (ties by id, descending), each with its child count (a count over the
    runs' sweep_id index per listed sweep, not over every run)."""
    check_limit(limit)
    s, r = sweeps_t, runs_t
    children = select(func.count()).select_from(r).where(r.c.sweep_id == s.c.id).scalar_subquery()
    query = select(s.c.id, s.c.name, s.c.status, s.c.created_at, children.label("children"))
    if cursor:
        position = decode_cursor(cursor, "sweeps")
        if len(position) != 2 or not all(isinstance(p, str) for p in position):
            raise bad_cursor(cursor, "not a position in a sweeps listing")
        at = _cursor_value("created_at", position[0], cursor)
        query = query.where(after_cursor(s.c.created_at, s.c.id, at, position[1], True, False))
    query = query.order_by(s.c.created_at.desc(), s.c.id.desc()).limit(limit + 1)
    with db.transaction() as conn:
        rows = [SweepListing(row.id, row.name, row.status, row.created_at, int(row.children or 0))
                for row in conn.execute(query)]
    if len(rows) <= limit:
        return Page(rows, None)
    last = rows[limit - 1]
    return Page(rows[:limit], encode_cursor({"q": "sweeps", "k": [last.created_at.isoformat(), last.id]}))


__all__ = ["MAX_LIMIT", "METRIC_FILTER_FORM", "RUN_SORTS", "LineagePage", "Page", "SweepListing", "check_limit",
           "decode_cursor", "encode_cursor", "find_artifacts", "lineage_page", "list_runs", "list_sweeps",
           "parse_metric_filter"]
