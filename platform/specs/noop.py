"""Spec of `noop` jobs: a diagnostic job that measures platform overhead and exercises fault handling."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import ArtifactRef, JobSpecBase, StrictModel


class NoopInputs(StrictModel):
    data: ArtifactRef | None = None


class NoopSpec(JobSpecBase):
    """Sleeps, logs metrics, writes a small output; can fail or crash its process on demand."""

    kind: Literal["noop"] = "noop"
    inputs: NoopInputs = NoopInputs()
    sleep_s: float = Field(0.0, ge=0, le=3600)
    metrics: int = Field(0, ge=0, le=100000, description="metric points to log")
    payload: str = Field("", description="text written to the `result` output (changes its digest)")
    fail: bool = Field(False, description="raise an error (tests failure recording)")
    crash_on_attempts: tuple[int, ...] = Field((), description="attempts on which the worker process kills itself")
