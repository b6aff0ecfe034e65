"""What a worker sees of the platform: its inputs, a work dir, metric logging, progress, checkpoints.

Workers get a `RunContext` and return `WorkerOutputs`; they never open a database session. The
executor builds the context with callbacks into the store; `local_context` builds one for tests and
for running a worker by hand (e.g. on a GPU box without the platform's database).
"""
from __future__ import annotations

import functools
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .errors import JobCancelled, JobTimeout, SpecError
from .jobs import check_recorded_output
from .provenance import code_fingerprint as code_fingerprint  # re-exported: what workers may use of provenance
from .provenance import derived_key
from .provenance import environment as environment

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class InputArtifact:
    """A consumed artifact, materialised at a local path whose digest was verified."""

    digest: str
    kind: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputArtifact:
    """A file or directory a worker produced; the platform content-addresses and registers it.

    It is named `RUN_NAME/ROLE` through its run once the run succeeded (workers do not name outputs).
    """

    path: Path
    kind: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkerOutputs:
    """What `run(spec, ctx)` returns: named artifacts and headline metrics."""

    artifacts: dict[str, OutputArtifact] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class Worker(Protocol):
    """The shape of a job-kind module: `bitsmith.workers.<kind>.run`."""

    def run(self, spec: Any, ctx: "RunContext") -> WorkerOutputs: ...


class ActorPool(Protocol):
    """Copies of one worker-defined class, each in its own process under Ray (in-process locally).

    Workers fan work out through this instead of importing ray: `map` spreads items over the actors
    (results in item order), `call_all` makes the same call on every actor (e.g. to sync weights).
    """

    size: int

    def map(self, method: str, items: list[Any]) -> list[Any]: ...

    def call_all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]: ...

    def close(self) -> None: ...


# (cls, n_actors, args, kwargs, cpus_per_actor, gpus_per_actor) -> pool
ActorPoolFactory = Callable[[type, int, tuple, dict, float, float], ActorPool]
MetricSink = Callable[[list[tuple[str, int | None, float]]], None]
CheckpointSink = Callable[[Path, int, dict[str, Any]], None]
# (derived key, kind) -> local path of an existing derived artifact, or None; (key, kind, path) -> stored path
DerivedLookup = Callable[[str, str], Path | None]
DerivedStore = Callable[[str, str, Path], Path]


@dataclass
class RunContext:
    """The small object a worker receives. Build one with `local_context` outside the platform."""

    run_id: str
    seed: int
    work_dir: Path
    inputs: dict[str, InputArtifact]
    metric_sink: MetricSink
    checkpoint_sink: CheckpointSink | None = None
    resume_checkpoint: Path | None = None
    resume_step: int | None = None
    deadline: float | None = None
    should_cancel: Callable[[], bool] = lambda: False
    attempt: int = 1
    cpus: float = 1.0
    actor_pool_factory: ActorPoolFactory | None = None
    derived_lookup: DerivedLookup | None = None
    derived_store: DerivedStore | None = None
    job_kind: str | None = None  # when set, what the worker records while running is held to the kind's declaration
    _metric_buffer: list[tuple[str, int | None, float]] = field(default_factory=list)
    _last_flush: float = field(default_factory=time.monotonic)

    # -- inputs ---------------------------------------------------------------------------------
    def input(self, name: str) -> InputArtifact:
        """The input `name`; a `SpecError` naming it (and the inputs the run has) when it was not given."""
        try:
            return self.inputs[name]
        except KeyError:
            have = ", ".join(sorted(self.inputs)) or "none"
            raise SpecError(f"inputs.{name}: not given to run {self.run_id}; expected an artifact ref for it "
                            f"(inputs given: {have})") from None

    def output_path(self, name: str) -> Path:
        """A fresh path under the work dir for an output file or directory."""
        path = self.work_dir / "outputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # -- metrics --------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record metrics (buffered, flushed in batches and at the end of the run)."""
        self.check_alive()
        for key, value in metrics.items():
            self._metric_buffer.append((key, step, float(value)))
        if len(self._metric_buffer) >= 256 or time.monotonic() - self._last_flush > 2.0:
            self.flush_metrics()

    def flush_metrics(self) -> None:
        if self._metric_buffer:
            batch, self._metric_buffer = self._metric_buffer, []
            self.metric_sink(batch)
        self._last_flush = time.monotonic()

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, path: Path, step: int, metadata: dict[str, Any] | None = None) -> None:
        """Store a checkpoint directory as an artifact so a retried or resubmitted run resumes from it."""
        self._check_recorded(checkpoint_role(step), "checkpoint")
        self.flush_metrics()
        if self.checkpoint_sink is not None:
            self.checkpoint_sink(Path(path), step, dict(metadata or {}))

    # -- derived artifacts (shared across runs) ---------------------------------------------------
    def derived_key(self, key: str, build: Callable[[Path], None]) -> str:
        """The key `cached_artifact(key, kind, build)` stores under: `key` mixed with the code fingerprint
        of the module defining `build` (for a worker that records which derived artifact it used)."""
        return derived_key(key, builder_module(build))

    def cached_artifact(self, key: str, kind: str, build: Callable[[Path], None]) -> Path:
        """A directory derived deterministically from `key` (e.g. a level database of one model + data),
        built once by `build(dir)` and reused by every later run that asks for the same key.

        The key must cover everything the content depends on (input digests, settings); the platform
        mixes in the code fingerprint of the module defining `build` (its source and every `bitsmith.*`
        module it imports), stores the result content-addressed and records it in lineage.
        """
        self._check_recorded(derived_role(kind), kind)  # before anything is looked up or built
        key = self.derived_key(key, build)
        if self.derived_lookup is not None:
            found = self.derived_lookup(key, kind)
            if found is not None:
                return found
        out = self.work_dir / "derived" / f"{kind}-{key[:16]}"
        if not out.exists():
            tmp = out.with_name(out.name + ".tmp")
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            build(tmp)
            tmp.rename(out)
        return self.derived_store(key, kind, out) if self.derived_store is not None else out

    def _check_recorded(self, role: str, kind: str) -> None:
        if self.job_kind is not None:
            check_recorded_output(self.job_kind, role, kind)  # an OutputError naming the role

    # -- parallelism --------------------------------------------------------------------------------
    def actor_pool(self, cls: type, n_actors: int, *args: Any, cpus_per_actor: float = 1.0,
                   gpus_per_actor: float = 0.0, **kwargs: Any) -> ActorPool:
        """`n_actors` instances of `cls(*args, **kwargs)`: Ray actors under the ray executor, else in-process.

        Use as a context manager (`with ctx.actor_pool(...) as pool:`) so the actors end with the job.
        """
        factory = self.actor_pool_factory or local_actor_pool
        return factory(cls, n_actors, args, kwargs, cpus_per_actor, gpus_per_actor)

    # -- liveness, progress, randomness ---------------------------------------------------------
    def check_alive(self) -> None:
        """Raise if the run was cancelled or ran past its timeout (called by progress and metrics)."""
        if self.deadline is not None and time.time() > self.deadline:
            raise JobTimeout(f"run {self.run_id}: timed out (ran past its timeout_s)")
        if self.should_cancel():
            raise JobCancelled(f"run {self.run_id}: cancelled")

    def progress(self, iterable: Iterable[T] | None = None, total: int | None = None,
                 desc: str = "") -> Iterator[T] | "Progress":
        """A progress bar on stderr (which is the run's log). Iterate it, or call `.update(n)`."""
        bar = Progress(self, total=total if total is not None else _len_or_none(iterable), desc=desc)
        return bar.wrap(iterable) if iterable is not None else bar

    def seed_everything(self, offset: int = 0) -> int:
        """Seed Python, NumPy and torch from the run's seed; returns the seed used."""
        seed = self.seed + offset
        random.seed(seed)
        try:
            import numpy as np

            np.random.seed(seed % 2**32)
        except ImportError:
            pass
        import torch

        torch.manual_seed(seed)
        return seed


def checkpoint_role(step: int) -> str:
    """The output role a checkpoint saved at `step` is recorded under (`checkpoint/step-000000042`)."""
    return f"checkpoint/step-{step:09d}"


def derived_role(kind: str) -> str:
    """The output role a derived artifact of `kind` built by a run is recorded under (`derived/level-db`)."""
    return f"derived/{kind}"


def builder_module(build: Callable[..., Any]) -> str:
    """The module that defines `build` (a function, lambda, method or `functools.partial` of one)."""
    while isinstance(build, functools.partial):
        build = build.func
    module = getattr(build, "__module__", None)
    if not module:
        raise TypeError(f"cached_artifact: cannot tell which module defines the builder {build!r}")
    return module


def _len_or_none(iterable: Iterable[Any] | None) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


class Progress:
    """A tqdm bar on stderr that also checks cancellation and timeout on every update."""

    def __init__(self, ctx: RunContext, total: int | None, desc: str):
        from tqdm.auto import tqdm

        self.ctx = ctx
        self.bar = tqdm(total=total, desc=desc, file=sys.stderr, mininterval=1.0,
                        disable=os.environ.get("BITSMITH_NO_PROGRESS") == "1", dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.ctx.check_alive()
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(n)

    def wrap(self, iterable: Iterable[T]) -> Iterator[T]:
        try:
            for item in iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LocalActorPool:
    """The in-process pool: `n` plain instances, calls made one after another."""

    def __init__(self, cls: type, n_actors: int, args: tuple, kwargs: dict):
        self.actors = [cls(*args, **kwargs) for _ in range(max(1, n_actors))]
        self.size = len(self.actors)

    def map(self, method: str, items: list[Any]) -> list[Any]:
        return [getattr(self.actors[i % self.size], method)(item) for i, item in enumerate(items)]

    def call_all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return [getattr(actor, method)(*args, **kwargs) for actor in self.actors]

    def close(self) -> None:
        self.actors = []

    def __enter__(self) -> "LocalActorPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def local_actor_pool(cls: type, n_actors: int, args: tuple, kwargs: dict, cpus: float, gpus: float) -> LocalActorPool:
    return LocalActorPool(cls, n_actors, args, kwargs)


@dataclass
class LocalRunRecorder:
    """Collects what a `local_context` run logs (for tests and runs outside the platform)."""

    metrics: list[tuple[str, int | None, float]] = field(default_factory=list)
    checkpoints: list[tuple[Path, int, dict[str, Any]]] = field(default_factory=list)

    def metric(self, key: str) -> list[float]:
        return [v for k, _, v in self.metrics if k == key]


def local_context(work_dir: str | Path, inputs: dict[str, str | Path | InputArtifact] | None = None,
                  seed: int = 0, run_id: str = "local", resume_checkpoint: Path | None = None,
                  resume_step: int | None = None, cpus: float = 1.0, job_kind: str | None = None,
                  ) -> tuple[RunContext, LocalRunRecorder]:
    """A context that keeps metrics and checkpoints in memory; inputs are local paths. With `job_kind`, what
    the worker records while running is held to that kind's declared outputs, as under the platform."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    recorder = LocalRunRecorder()
    resolved: dict[str, InputArtifact] = {}
    for name, value in (inputs or {}).items():
        if isinstance(value, InputArtifact):
            resolved[name] = value
        else:
            from .digests import digest_path, read_artifact_meta

            path = Path(value)
            meta = read_artifact_meta(path)
            resolved[name] = InputArtifact(digest=digest_path(path), kind=meta.get("kind", "file"), path=path,
                                           metadata=meta)

    def keep_checkpoint(path: Path, step: int, meta: dict[str, Any]) -> None:
        recorder.checkpoints.append((path, step, meta))

    ctx = RunContext(run_id=run_id, seed=seed, work_dir=work_dir, inputs=resolved,
                     metric_sink=recorder.metrics.extend, checkpoint_sink=keep_checkpoint,
                     resume_checkpoint=resume_checkpoint, resume_step=resume_step, cpus=cpus, job_kind=job_kind)
    return ctx, recorder
