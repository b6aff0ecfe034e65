"""Spec of `rl` jobs (fields grow with the rl issue)."""
from __future__ import annotations

from typing import Literal

from .common import JobSpecBase


class RLSpec(JobSpecBase):
    kind: Literal["rl"] = "rl"
