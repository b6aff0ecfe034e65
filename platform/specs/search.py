"""Spec of `search` jobs (fields grow with the search issue)."""
from __future__ import annotations

from typing import Literal

from .common import JobSpecBase


class SearchSpec(JobSpecBase):
    kind: Literal["search"] = "search"
