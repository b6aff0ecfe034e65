"""Pipelines: stages of job specs (YAML), each stage's jobs run together, later stages use earlier outputs.

A pipeline file lists stages; each job names a spec file (relative to the pipeline file) and optional
`set` overrides. Inputs refer to earlier outputs by artifact name (`RUN_NAME/ROLE`). Every job goes
through the same submission path as `bitsmith submit`, so finished steps are cache hits.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from . import store
from .config import Settings
from .errors import SpecError
from .specs import JobSpecBase, load_spec
from .specs.strict import StrictInputError, loads_yaml


@dataclass(frozen=True)
class PipelineJob:
    spec_file: Path
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    name: str
    jobs: tuple[PipelineJob, ...]


@dataclass
class StageResult:
    name: str
    run_ids: list[str] = field(default_factory=list)
    cache_hits: int = 0


def load_pipeline(path: Path) -> list[Stage]:
    path = Path(path)
    try:
        data = loads_yaml(path.read_text(), str(path))
    except (OSError, StrictInputError) as exc:
        raise SpecError(f"{path}: cannot read pipeline ({exc}); expected YAML with `stages`") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise SpecError(f"{path}: expected a mapping with a `stages` list")
    stages = []
    for i, raw in enumerate(data["stages"]):
        if not isinstance(raw, dict) or not isinstance(raw.get("jobs"), list):
            raise SpecError(f"{path}: stages[{i}]: expected {{name, jobs: [...]}}")
        jobs = []
        for j, job in enumerate(raw["jobs"]):
            if not isinstance(job, dict) or "spec" not in job:
                raise SpecError(f"{path}: stages[{i}].jobs[{j}]: expected {{spec: FILE, set: {{...}}}}")
            sets = tuple(f"{k}={_yaml_scalar(v)}" for k, v in (job.get("set") or {}).items())
            jobs.append(PipelineJob(path.parent / job["spec"], sets))
        stages.append(Stage(str(raw.get("name", f"stage-{i}")), tuple(jobs)))
    return stages


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def run_pipeline(stages: list[Stage], settings: Settings, *, executor: str = "ray", no_cache: bool = False,
                 on_stage: Callable[[Stage, list[str]], None] | None = None,
                 watch: Callable[[list[str]], Any] | None = None) -> list[StageResult]:
    """Submit and run stage after stage; stop at the first stage with a failed job."""
    from .provenance import code_version
    from .scheduler.ray_executor import EXECUTORS
    from .scheduler.submit import record_submission
    from .errors import JobError
    from .task_files import import_task_files

    db = store.open_database(settings.db_url)
    code = code_version()
    results = []
    for stage in stages:
        specs: list[JobSpecBase] = [import_task_files(db, settings, load_spec(job.spec_file, job.overrides))
                                    for job in stage.jobs]
        subs = [record_submission(db, spec, code=code, executor=executor, no_cache=no_cache) for spec in specs]
        result = StageResult(stage.name, [s.run.id for s in subs], sum(s.cache_hit for s in subs))
        results.append(result)
        if on_stage:
            on_stage(stage, result.run_ids)
        pending = [s.run.id for s in subs if not s.cache_hit]
        if pending:
            stop = threading.Event()
            watcher = threading.Thread(target=_watch_loop, args=(watch, result.run_ids, stop), daemon=True) if watch else None
            if watcher:
                watcher.start()
            try:
                finals = EXECUTORS[executor](pending, settings)
            finally:
                stop.set()
                if watcher:
                    watcher.join()
            failed = [rid for rid, status in finals.items() if status != "succeeded"]
            if failed:
                run = store.get_run(db, failed[0])
                raise JobError(f"pipeline stage {stage.name!r}: run {run.id} ({run.name}) {run.status}: {run.error}",
                               hint=f"bitsmith runs logs {run.id[:10]}")
    return results


def _watch_loop(watch: Callable[[list[str]], Any], run_ids: list[str], stop: threading.Event) -> None:
    while not stop.is_set():
        watch(run_ids)
        stop.wait(1.0)
    watch(run_ids)
