"""The runs page's query: filters, a sort (a column or a final metric), keyset pages, checked with messages that
name the API's parameters, answered by the store's paged `store.queries.list_runs`."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..store.records import RUN_STATUSES, RunRecord

METRIC_FILTER = re.compile(r"^\s*(?P<key>[^<>=!\s][^<>=!]*?)\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<value>\S+)\s*$")
METRIC_FILTER_FORM = "METRIC OP NUMBER with OP one of < <= > >= == !=, e.g. 'test/token_ppl < 50'"
RUN_SORTS = ("created_at", "started_at", "finished_at", "name", "kind", "status")
MAX_LIMIT = 500


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
    """One page of runs matching `q`: the store's keyset-paged query (a metric sort reads the final-metric summary
    table's index and lists only runs that have that metric)."""
    from ..store import queries

    check_query(q)
    page = queries.list_runs(db, kind=q.kind, status=q.status, tag=q.tag, sweep_id=q.sweep_id,
                             name_contains=q.name_contains, metric_filters=q.metric_filters, sort=q.sort,
                             descending=q.descending, limit=q.limit, cursor=q.cursor)
    return RunPage(list(page.rows), page.next_cursor)
