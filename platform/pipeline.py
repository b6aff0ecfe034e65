"""Pipelines: stages of job specs (YAML), each stage's jobs run together, later stages use earlier outputs.

A pipeline file lists stages; each job names a spec file (relative to the pipeline file) and optional
`set` overrides. Inputs refer to earlier outputs by artifact name (`RUN_NAME/ROLE`); ROLE must be an output
the job kind of RUN_NAME declares: checked on load where RUN_NAME is an earlier step, and before the first
stage is submitted where it is a run already in the store. Every job goes through the same submission path
as `bitsmith submit`, so finished steps are cache hits.
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
from .output_refs import check_declared_output, check_store_references, split_run_ref
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
    load_stage_specs(stages)  # every spec validates and names only declared outputs of earlier steps
    return stages


def load_stage_specs(stages: list[Stage]) -> list[list[JobSpecBase]]:
    """Each stage's validated job specs; refuses an input naming an undeclared output of an earlier step."""
    specs = [[load_spec(job.spec_file, job.overrides) for job in stage.jobs] for stage in stages]
    check_step_references(stages, specs)
    return specs


def check_step_references(stages: list[Stage], specs: list[list[JobSpecBase]]) -> None:
    """Refuse an input `RUN_NAME/ROLE` whose RUN_NAME is a step of an earlier stage and whose ROLE that step's
    job kind does not declare as an output (a `SpecError` naming the spec file and input field)."""
    earlier: dict[str, str] = {}  # run name -> job kind, of the steps of the stages before this one
    for stage, stage_specs in zip(stages, specs):
        for job, spec in zip(stage.jobs, stage_specs):
            for role, ref in spec.input_refs().items():
                parsed = split_run_ref(ref)
                if parsed is not None and not parsed[2] and parsed[0] in earlier:
                    check_declared_output(f"{job.spec_file}: {spec.input_field(role)}", ref, earlier[parsed[0]],
                                          parsed[1], f"pipeline step {parsed[0]!r}")
        earlier.update({spec.name: spec.kind for spec in stage_specs if spec.name})


def check_outside_references(db: Any, stages: list[Stage], specs: list[list[JobSpecBase]]) -> None:
    """Refuse, before the first stage is submitted, an input naming an undeclared output of a run already in the
    store (not a step of this pipeline): a later stage would otherwise fail only after the earlier ones ran."""
    steps = {spec.name for stage_specs in specs for spec in stage_specs if spec.name}
    refs = [(f"{job.spec_file}: {spec.input_field(role)}", ref)
            for stage, stage_specs in zip(stages, specs) for job, spec in zip(stage.jobs, stage_specs)
            for role, ref in spec.input_refs().items()]
    check_store_references(db, refs, skip_names=steps)


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
    loaded_stages = load_stage_specs(stages)
    check_outside_references(db, stages, loaded_stages)
    results = []
    for stage, loaded in zip(stages, loaded_stages):
        specs = [import_task_files(db, settings, spec) for spec in loaded]
        subs = [record_submission(db, spec, code=code, executor=executor, no_cache=no_cache) for spec in specs]
        result = StageResult(stage.name, [s.run.id for s in subs], sum(s.cache_hit for s in subs))
        results.append(result)
        if on_stage:
            on_stage(stage, result.run_ids)
        pending = [s.run.id for s in subs if not s.cache_hit]
        if pending:
            stop = threading.Event()
            watcher = (threading.Thread(target=_watch_loop, args=(watch, result.run_ids, stop), daemon=True)
                       if watch else None)
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
