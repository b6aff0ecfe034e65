"""Spec of `eval` jobs (fields grow with the eval issue)."""
from __future__ import annotations

from typing import Literal

from .common import JobSpecBase


class EvalSpec(JobSpecBase):
    kind: Literal["eval"] = "eval"
