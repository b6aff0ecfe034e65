"""Frozen records the store hands out (never ORM rows), and the run status vocabulary."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
RUN_STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL_STATUSES = frozenset({SUCCEEDED, FAILED, CANCELLED})
# Allowed transitions; anything else is a bug (or a race lost to another writer).
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, SUCCEEDED, FAILED, CANCELLED}),
    RUNNING: frozenset({RUNNING, QUEUED, SUCCEEDED, FAILED, CANCELLED}),  # RUNNING->RUNNING: retry attempt
    SUCCEEDED: frozenset(),
    FAILED: frozenset({QUEUED}),  # a failed run may be re-queued (resubmitted)
    CANCELLED: frozenset(),
}


def new_id() -> str:
    """A 26-hex-digit id: 14 random digits first (so short prefixes are unique), then the ms clock."""
    return f"{os.urandom(7).hex()}{int(time.time() * 1000):012x}"


@dataclass(frozen=True)
class RunRecord:
    id: str
    kind: str
    name: str | None
    status: str
    spec: dict[str, Any]              # the fully resolved spec (inputs as sha256:DIGEST)
    spec_hash: str
    cache_key: str
    seed: int
    code_version: dict[str, Any]      # {"package": "0.1.0", "commit": "...", "dirty_hash": "..."|None}
    environment: dict[str, Any]       # filled when the run starts: versions, device, dtype, flags
    tags: tuple[str, ...]
    executor: str | None
    host: str | None
    pid: int | None
    attempt: int
    max_retries: int
    cache_hit_of: str | None
    sweep_id: str | None
    cancel_requested: bool
    error: str | None
    traceback: str | None
    log_path: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_owner: str | None = None    # "host:pid" (and Ray node) of the attempt holding the run
    heartbeat_at: datetime | None = None
    lease_expires_at: datetime | None = None
    joins: str | None = None          # the in-flight identical run it waits for (then becomes its cache hit)
    priority: int = 0                 # queue order: higher first, then oldest first


@dataclass(frozen=True)
class ArtifactRecord:
    digest: str                       # sha256 hex of the file, or of a directory's manifest
    kind: str                         # model | quantized-model | dataset | report | checkpoint | ...
    name: str | None
    uri: str                          # where the bytes live (under the artifact root)
    size_bytes: int
    is_dir: bool
    metadata: dict[str, Any]
    producer_run_id: str | None
    created_at: datetime
    digest_version: int = 2           # the digest encoding (bitsmith.platform.digests; 1: rows before 0003)


@dataclass(frozen=True)
class RunArtifactEdge:
    run_id: str
    digest: str
    role: str                         # the input/output name, e.g. "model", "corpus", "report"
    direction: str                    # "input" | "output"


@dataclass(frozen=True)
class MetricRecord:
    run_id: str
    key: str
    step: int | None
    value: float
    attempt: int = 0                  # the attempt that logged it (0: a cache hit's copied finals)


@dataclass(frozen=True)
class RunEventRecord:
    run_id: str
    at: datetime
    from_status: str | None
    to_status: str
    attempt: int
    message: str | None


@dataclass(frozen=True)
class SweepRecord:
    id: str
    name: str | None
    spec: dict[str, Any]
    status: str
    created_at: datetime
    run_ids: tuple[str, ...] = field(default_factory=tuple)
    resolved_inputs: dict[str, str] | None = None  # input ref -> digest, pinned at creation


@dataclass(frozen=True)
class DispatcherRecord:
    """The store's dispatcher: who holds its lease, until when (database clock), and its last snapshot."""

    owner: str                        # host:pid
    ray_address: str | None
    started_at: datetime
    heartbeat_at: datetime
    lease_expires_at: datetime
    alive: bool                       # its lease has not run out and (on this host) its process exists
    state: dict[str, Any]             # {"total": {...}, "used": {...}, "free": {...}, "in_flight": n, ...}
