"""Local files a spec's tasks read (an eval `choice` task's `file`) become `task-file` artifacts on submit.

The spec then names each by digest (`sha256:...`), so the file's bytes are in the cache key and lineage
and the worker reads the verified artifact, never the submitter's path. A `file` that is no local file is
left as it is: an artifact ref, resolved (and kind-checked) with the other inputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import Settings
from .errors import SpecError
from .specs import JobSpecBase
from .specs.eval import EvalSpec
from .specs.kinds import TASK_FILE


def import_task_files(db: Any, settings: Settings, spec: JobSpecBase) -> JobSpecBase:
    """`spec` with each task `file` that is a local file imported and replaced by `sha256:DIGEST`."""
    if not isinstance(spec, EvalSpec):
        return spec
    imported = {i: ref for i, file in spec.task_files().items() if (ref := _import(db, settings, i, file))}
    return spec.with_task_files(imported) if imported else spec


def import_base_task_files(db: Any, settings: Settings, base: dict[str, Any]) -> dict[str, Any]:
    """A sweep's `base` (a spec as data) with its local task files imported the same way."""
    tasks = base.get("tasks")
    if base.get("kind") != "eval" or not isinstance(tasks, list):
        return base
    out = []
    for i, task in enumerate(tasks):
        file = task.get("file") if isinstance(task, dict) and task.get("type", "") == "choice" else None
        ref = _import(db, settings, i, file) if isinstance(file, str) else None
        out.append({**task, "file": ref} if ref else task)
    return {**base, "tasks": out}


def _import(db: Any, settings: Settings, index: int, file: str) -> str | None:
    """`sha256:DIGEST` of local file `file` once registered as a task file; None when it is no local path."""
    from .register import register_path

    path = Path(file).expanduser()
    if path.is_dir():
        raise SpecError(f"tasks[{index}].file {file!r}: a directory; expected a JSONL file or an artifact ref")
    if not path.is_file() and path.suffix in (".jsonl", ".json"):
        raise SpecError(f"tasks[{index}].file {file!r}: no such local file (a relative path is relative to the "
                        "current directory); expected a JSONL file or an artifact ref")
    if not path.is_file():
        return None  # an artifact ref, resolved with the other inputs
    return f"sha256:{register_path(db, settings, path, kind=TASK_FILE).digest}"
