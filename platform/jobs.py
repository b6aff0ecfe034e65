"""Running a job kind: its worker module (imported only when a job of that kind runs) and the checks of what
the worker produced (returned, or recorded through its context while running) against the outputs the kind
declares (`specs.job_kinds.JOB_KIND_TABLE`)."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .errors import OutputError, SpecError
from .specs.job_kinds import JOB_KIND_TABLE, JobKind

WORKER_MODULES: dict[str, str] = {kind: entry.worker for kind, entry in JOB_KIND_TABLE.items()}


def job_kind(kind: str) -> JobKind:
    """The table entry of `kind`; a `SpecError` listing the kinds when there is none."""
    if kind not in JOB_KIND_TABLE:
        raise SpecError(f"kind: unknown job kind {kind!r}; expected one of {', '.join(JOB_KIND_TABLE)}")
    return JOB_KIND_TABLE[kind]


def check_runnable(kind: str) -> None:
    """Refuse, before anything is written, a kind this version of bitsmith has no worker for."""
    job_kind(kind)


def load_worker(kind: str) -> ModuleType:
    return importlib.import_module(job_kind(kind).worker)


def check_returned_outputs(kind: str, artifacts: dict[str, Any]) -> None:
    """Refuse a worker's returned outputs (role -> `OutputArtifact`) that break `kind`'s declaration."""
    entry = job_kind(kind)
    for role, out in artifacts.items():
        declared = entry.output_for(role)
        if declared is None or declared.via_context:
            raise OutputError(f"{kind} worker: returned output {role!r}, which {kind} jobs do not declare; "
                              f"expected one of {_returned_roles(entry)}")
        _check_kind(kind, role, out.kind, declared.kind)
    for declared in entry.outputs:
        if declared.required and not declared.via_context and declared.role not in artifacts:
            raise OutputError(f"{kind} worker: returned no {declared.role!r} output; expected it "
                              f"(a {declared.kind!r} artifact every {kind} job produces)")


def check_recorded_output(kind: str, role: str, artifact_kind: str) -> None:
    """Refuse an output a `kind` worker records while running (`ctx.save_checkpoint`, `ctx.cached_artifact`)
    that the kind does not declare as recorded while running, or of another artifact kind than declared."""
    entry = job_kind(kind)
    declared = entry.output_for(role)
    if declared is None or not declared.via_context:
        recorded = ", ".join(o.role for o in entry.outputs if o.via_context)
        expected = f"one of {recorded}" if recorded else f"none ({kind} jobs record no outputs while running)"
        raise OutputError(f"{kind} worker: recorded output {role!r} while running, which {kind} jobs do not "
                          f"declare; expected {expected}")
    _check_kind(kind, role, artifact_kind, declared.kind)


def _check_kind(kind: str, role: str, got: str, expected: str) -> None:
    if got != expected:
        raise OutputError(f"{kind} worker: output {role!r} is a {got!r} artifact; expected {expected!r} "
                          f"(what {kind} jobs declare for {role!r})")


def _returned_roles(entry: JobKind) -> str:
    return ", ".join(o.role for o in entry.outputs if not o.via_context)
