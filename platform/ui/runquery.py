"""The runs page's query: filters, a sort (a column or a final metric), keyset pages.

It uses the store's paged `store.queries.list_runs` when that exists; until then a read-only query here
(keyset on creation time; metric filters and metric sorts evaluated over the newest FALLBACK_WINDOW matches).
"""
from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from ..errors import UsageError
from ..store.records import RUN_STATUSES, RunRecord

METRIC_FILTER = re.compile(r"^\s*(?P<key>[^<>=!\s][^<>=!]*?)\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<value>\S+)\s*$")
METRIC_FILTER_FORM = "METRIC OP NUMBER with OP one of < <= > >= == !=, e.g. 'test/token_ppl < 50'"
RUN_SORTS = ("created_at", "started_at", "finished_at", "name", "kind", "status")
MAX_LIMIT = 500
FALLBACK_WINDOW = 5000
_OPS = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__, "==": float.__eq__,
        "!=": float.__ne__}


@dataclass(frozen=True)
class RunQuery:
    kind: str | None = None
    status: str | None = None
    tag: str | None = None
    sweep_id: str | None = None
    name_contains: str | None = None
    metric_filters: tuple[tuple[str, str, float], ...] = ()
    sort: str = "created_at"
    descending: bool = True
    limit: int = 50
    cursor: str | None = None


@dataclass(frozen=True)
class RunPage:
    rows: list[RunRecord]
    next_cursor: str | None


def parse_metric_filter(text: str) -> tuple[str, str, float]:
    """`test/token_ppl < 50` -> ("test/token_ppl", "<", 50.0); a UsageError naming the expected form otherwise."""
    match = METRIC_FILTER.match(text or "")
    if match is None:
        raise UsageError(f"metric filter {text!r}: malformed; expected {METRIC_FILTER_FORM}")
    try:
        value = float(match["value"])
    except ValueError:
        raise UsageError(f"metric filter {text!r}: {match['value']!r} is not a number; expected {METRIC_FILTER_FORM}"
                         ) from None
    if not math.isfinite(value):
        raise UsageError(f"metric filter {text!r}: expected a finite number")
    return match["key"], match["op"], value


def check_query(q: RunQuery) -> RunQuery:
    if q.status is not None and q.status not in RUN_STATUSES:
        raise UsageError(f"status {q.status!r}: unknown; expected one of {', '.join(RUN_STATUSES)}")
    if not (q.sort in RUN_SORTS or (q.sort.startswith("metric:") and len(q.sort) > 7)):
        raise UsageError(f"sort {q.sort!r}: unknown; expected one of {', '.join(RUN_SORTS)} or metric:NAME")
    if not 1 <= q.limit <= MAX_LIMIT:
        raise UsageError(f"limit {q.limit}: expected 1 to {MAX_LIMIT}")
    return q


def query_runs(db: Any, q: RunQuery) -> RunPage:
    """One page of runs matching `q` (see the module docstring for which implementation answers)."""
    check_query(q)
    try:
        from ..store import queries  # the store's paged queries, when present
    except ImportError:
        queries = None
    if queries is not None and hasattr(queries, "list_runs"):
        page = queries.list_runs(db, kind=q.kind, status=q.status, tag=q.tag, sweep_id=q.sweep_id,
                                 name_contains=q.name_contains, metric_filters=q.metric_filters, sort=q.sort,
                                 descending=q.descending, limit=q.limit, cursor=q.cursor)
        return RunPage(list(page.rows), page.next_cursor)
    return _fallback(db, q)


def _encode(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def _decode(cursor: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        raise UsageError(f"cursor {cursor[:40]!r}: not a cursor this server handed out; expected the "
                         "next_cursor of a previous page") from None


def _fallback(db: Any, q: RunQuery) -> RunPage:
    from ..store import final_metrics
    from ..store.runs import run_from_row
    from ..store.schema import runs_t

    t = runs_t
    query = select(t)
    if q.kind is not None:
        query = query.where(t.c.kind == q.kind)
    if q.status is not None:
        query = query.where(t.c.status == q.status)
    if q.sweep_id is not None:
        query = query.where(t.c.sweep_id == q.sweep_id)
    if q.name_contains:
        query = query.where(t.c.name.contains(q.name_contains, autoescape=True))
    keyset = q.sort == "created_at" and not q.metric_filters and q.tag is None
    if keyset:
        order = (t.c.created_at.desc(), t.c.id.desc()) if q.descending else (t.c.created_at.asc(), t.c.id.asc())
        query = query.order_by(*order)
        if q.cursor:
            key = _decode(q.cursor)
            if not (isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key)):
                raise UsageError(f"cursor {q.cursor[:40]!r}: not a runs cursor; expected a next_cursor")
            from datetime import datetime

            try:
                at = datetime.fromisoformat(key[0])
            except ValueError:
                raise UsageError(f"cursor {q.cursor[:40]!r}: not a runs cursor; expected a next_cursor") from None
            if at.tzinfo is None:
                raise UsageError(f"cursor {q.cursor[:40]!r}: not a runs cursor; expected a next_cursor")
            before = (t.c.created_at < at) | ((t.c.created_at == at) & (t.c.id < key[1]))
            after = (t.c.created_at > at) | ((t.c.created_at == at) & (t.c.id > key[1]))
            query = query.where(before if q.descending else after)
        with db.transaction() as conn:
            rows = [run_from_row(r) for r in conn.execute(query.limit(q.limit + 1))]
        more = len(rows) > q.limit
        rows = rows[:q.limit]
        cursor = _encode([rows[-1].created_at.isoformat(), rows[-1].id]) if more else None
        return RunPage(rows, cursor)
    # Metric sort/filter or a tag: evaluated in Python over the newest FALLBACK_WINDOW matches, offset pages.
    query = query.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(FALLBACK_WINDOW)
    with db.transaction() as conn:
        rows = [run_from_row(r) for r in conn.execute(query)]
    if q.tag is not None:
        rows = [r for r in rows if q.tag in r.tags]
    finals = final_metrics(db, [r.id for r in rows]) if (q.metric_filters or q.sort.startswith("metric:")) else {}
    for key, op, value in q.metric_filters:
        rows = [r for r in rows if key in finals[r.id] and _OPS[op](float(finals[r.id][key]), value)]
    if q.sort.startswith("metric:"):
        name = q.sort[7:]
        present = [r for r in rows if name in finals[r.id] and not math.isnan(finals[r.id][name])]
        present.sort(key=lambda r: (finals[r.id][name], r.id), reverse=q.descending)
        rows = present + [r for r in rows if r not in present]
    else:
        rows.sort(key=lambda r: (_sortable(getattr(r, q.sort)), r.id), reverse=q.descending)
    offset = 0
    if q.cursor:
        key = _decode(q.cursor)
        if not (isinstance(key, dict) and isinstance(key.get("o"), int) and key["o"] >= 0):
            raise UsageError(f"cursor {q.cursor[:40]!r}: not a runs cursor; expected a next_cursor")
        offset = key["o"]
    page = rows[offset:offset + q.limit]
    more = offset + q.limit < len(rows)
    return RunPage(page, _encode({"o": offset + q.limit}) if more else None)


def _sortable(value: Any) -> tuple[int, Any]:
    return (0, "") if value is None else (1, value.isoformat() if hasattr(value, "isoformat") else value)
