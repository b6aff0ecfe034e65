"""Keyset paging shared by the store's listings: pages, opaque cursors, limits, and the after-cursor condition.

A cursor is base64 JSON naming its listing (`q`), the parameters it depends on (e.g. the sort) and the last
row's sort key (`k`); `decode_cursor` refuses one from another listing or other parameters.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, not_, or_

from ..errors import UsageError

MAX_LIMIT = 500


@dataclass(frozen=True)
class Page:
    """One page of a listing: its rows and the cursor of the next page (None: this is the last one)."""

    rows: list
    next_cursor: str | None


# ---------------------------------------------------------------------------------------- cursors

def encode_cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def bad_cursor(cursor: str, why: str) -> UsageError:
    shown = cursor if len(cursor) <= 40 else cursor[:40] + "..."
    return UsageError(f"--cursor {shown!r}: {why}; expected the next cursor printed by the previous page of the "
                      "same query")


def decode_cursor(cursor: str, listing: str, **expected: Any) -> list:
    """The sort key in `cursor`, which must come from `listing` with the same `expected` parameters."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise bad_cursor(cursor, "not a cursor") from None
    if not isinstance(payload, dict) or payload.get("q") != listing or not isinstance(payload.get("k"), list):
        raise bad_cursor(cursor, f"not a cursor of {listing}")
    for name, value in expected.items():
        if payload.get(name) != value:
            raise bad_cursor(cursor, f"made for {name} {payload.get(name)!r}, not {value!r}")
    return payload["k"]


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise UsageError(f"--limit {limit!r}: expected a page size from 1 to {MAX_LIMIT}")
    return limit


def after_cursor(column: Any, id_column: Any, value: Any, row_id: str, descending: bool,
           nullable: bool) -> ColumnElement[bool]:
    """Rows after (value, row_id) in the order `column`, then `id_column`, both `descending` or not; NULLs last.

    Written as `column <= value AND NOT (column = value AND id >= row_id)` (descending; mirrored ascending), so
    the database can seek an index on `column` to the cursor instead of scanning from the start.
    """
    if value is None:  # already among the NULLs (which come last)
        return and_(column.is_(None), id_column < row_id if descending else id_column > row_id)
    if descending:
        keyset = and_(column <= value, not_(and_(column == value, id_column >= row_id)))
    else:
        keyset = and_(column >= value, not_(and_(column == value, id_column <= row_id)))
    return or_(keyset, column.is_(None)) if nullable else keyset


