"""Records and values as strict JSON: datetimes as ISO strings, NaN and infinities as null."""
from __future__ import annotations

import dataclasses
import math
from datetime import datetime
from typing import Any


def jsonable(obj: Any) -> Any:
    """`obj` with dataclasses, tuples, sets and datetimes turned into JSON types; non-finite floats -> None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
