"""`RUN_NAME/ROLE` and `run:RUN_ID/ROLE` references checked against what the producing job kind declares.

Pipelines check references to their own earlier steps on load; pipelines and sweeps check references to runs
already in the store before anything is submitted. A role the producer's kind does not declare (as an output
its worker returns) is a `SpecError` naming the field, the producer, the role and the roles it declares.
Whether the output exists is left to resolving the reference (`store.resolve_artifact_ref`).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import store
from .errors import NotFoundError, SpecError, UsageError
from .specs.job_kinds import JOB_KIND_TABLE


def split_run_ref(ref: str) -> tuple[str, str, bool] | None:
    """(run name or id, role, whether it is an id) of a run output reference; None for digests and plain names."""
    text = ref.strip()
    if text.startswith("run:"):
        run, sep, role = text[4:].partition("/")
        return (run, role, True) if sep and run and role else None
    if text.startswith("sha256:"):
        return None
    run, sep, role = text.rpartition("/")  # as the store reads RUN_NAME/ROLE
    return (run, role, False) if sep and run and role else None


def check_declared_output(where: str, ref: str, kind: str, role: str, producer: str) -> None:
    """Refuse `ref` (found at `where`) when `producer` (a `kind` job) does not declare `role` as a returned output."""
    entry = JOB_KIND_TABLE.get(kind)
    if entry is None:  # a kind this version has no entry for: resolving the ref tells what exists
        return
    declared = entry.output_for(role)
    if declared is None or declared.via_context:
        roles = ", ".join(o.role for o in entry.outputs if not o.via_context)
        raise SpecError(f"{where}: {ref!r} names output {role!r} of {producer}, which {kind} jobs do not declare; "
                        f"expected one of {roles}", hint=f"bitsmith spec-schema {kind}")


def check_store_references(db: Any, refs: Iterable[tuple[str, str]], *, skip_names: Iterable[str] = ()) -> None:
    """Check each (where, ref) naming a run in the store (by name or id) against that run's job kind.

    Run names in `skip_names` (a pipeline's own steps) are left out; a ref naming no run is left to resolution.
    """
    skipped = set(skip_names)
    for where, ref in refs:
        parsed = split_run_ref(ref)
        if parsed is None or (not parsed[2] and parsed[0] in skipped):
            continue
        run_part, role, by_id = parsed
        if by_id:
            try:
                run = store.get_run(db, run_part)
            except (NotFoundError, UsageError):
                continue
            producer = f"run {run.id}"
        else:
            run = store.newest_run_named(db, run_part)
            if run is None:
                continue
            producer = f"run {run_part!r} ({run.id}, {run.status})"
        check_declared_output(where, ref, run.kind, role, producer)
