"""Check that the store and the artifact root agree (`bitsmith db check`), e.g. after a node was lost.

Finds: artifacts whose bytes are missing or do not match their digest, runs left running past their lease
(nobody is running them any more), succeeded runs that recorded no outputs, and runs with more attempts
than their retries allow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import store
from .artifacts import materialize
from .config import Settings
from .errors import ArtifactError
from .store.records import RUNNING, SUCCEEDED


@dataclass(frozen=True)
class Problem:
    what: str        # "artifact" | "run"
    ref: str         # digest or run id
    issue: str


@dataclass
class IntegrityReport:
    artifacts_checked: int = 0
    runs_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_store(db: Any, settings: Settings, *, verify_bytes: bool = True) -> IntegrityReport:
    """Every artifact's bytes (digest re-computed when `verify_bytes`) and every run's ledger state."""
    report = IntegrityReport()
    for art in store.list_artifacts(db, limit=None):
        report.artifacts_checked += 1
        try:
            materialize(settings.artifact_root, art.digest, settings.home / "cache", verify=verify_bytes)
        except ArtifactError as exc:
            report.problems.append(Problem("artifact", art.digest, exc.message))
    expired = {r.id for r in store.expired_runs(db)}
    for run in store.list_runs(db, limit=None):
        report.runs_checked += 1
        if run.id in expired:
            report.problems.append(Problem("run", run.id, f"still {RUNNING} but its lease expired at "
                                           f"{run.lease_expires_at.isoformat(timespec='seconds')} (held by "
                                           f"{run.lease_owner}); `bitsmith runs recover` re-queues or fails it"))
        if run.attempt > run.max_retries + 1:
            report.problems.append(Problem("run", run.id, f"{run.attempt} attempts for retries={run.max_retries}"))
        if run.status == SUCCEEDED and not store.run_outputs(db, run.id):
            report.problems.append(Problem("run", run.id, "succeeded without any recorded output"))
    return report
