"""Spec of `quantize` jobs (fields grow with the quantize issue)."""
from __future__ import annotations

from typing import Literal

from .common import JobSpecBase


class QuantizeSpec(JobSpecBase):
    kind: Literal["quantize"] = "quantize"
