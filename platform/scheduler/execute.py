"""The body of one job: claim the run, build its context, call the worker, record what it produced.

The same function runs in-process (local executor) and as a Ray task (ray executor). It is the only
place where a running job touches the store; the worker itself only sees its `RunContext`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, TextIO

from .. import store
from ..artifacts import materialize
from ..config import Settings
from ..context import InputArtifact, RunContext
from ..errors import JobCancelled, JobTimeout
from ..jobs import check_returned_outputs, load_worker
from ..provenance import environment
from ..register import register_path
from ..specs import parse_spec
from ..store.records import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, TERMINAL_STATUSES, RunRecord

log = logging.getLogger(__name__)
CHECKPOINT_ROLE = "checkpoint/step-"
JOIN_POLL_S = 0.5


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def run_log_path(settings: Settings, run_id: str) -> Path:
    return settings.runs_dir / run_id / "run.log"


def execute_run(run_id: str, settings: Settings) -> str:
    """Run one queued run to a terminal status as its next attempt; returns the status it ends in.

    The attempt claims the run with a lease and renews it from a heartbeat thread. If it loses the lease
    (its run was taken for dead and retried or failed elsewhere), it stops and records nothing more.
    """
    db = store.open_database(settings.db_url)
    run = store.get_run(db, run_id)
    if run.status == RUNNING and store.attempt_is_dead(db, run):  # a dead attempt left it running: recover it first
        store.retry_or_fail(db, run, f"attempt {run.attempt} ({run.lease_owner}) is gone")
        run = store.get_run(db, run_id)
    if run.status in TERMINAL_STATUSES:
        return run.status
    if run.cancel_requested:
        store.transition(db, run_id, CANCELLED, message="cancelled before start", finished_at=utcnow())
        return CANCELLED
    if run.joins is not None and run.attempt == 0:
        joined = _await_joined(db, run)
        if joined is not None:
            return joined
    attempt = run.attempt + 1
    if attempt > run.max_retries + 1:
        store.transition(db, run_id, FAILED, message="retries used up",
                         error=f"attempt {attempt} would exceed retries ({run.max_retries})", finished_at=utcnow())
        return FAILED
    log_path = run_log_path(settings, run_id)
    with _tee_output(log_path):
        owner = store.lease_owner(_ray_node_id())
        print(f"[bitsmith] run {run_id} ({run.kind}) attempt {attempt} on {owner}", file=sys.stderr)
        spec = parse_spec(run.spec, source=f"run {run_id} spec")
        device = getattr(getattr(spec, "compute", None), "device", None)
        try:
            run = store.transition(  # compare-and-set: of two executors claiming one run, one wins
                db, run_id, RUNNING, expected_from={QUEUED}, expected_attempt=run.attempt,
                message=f"attempt {attempt} on {owner}", attempt=attempt, host=socket.gethostname(), pid=os.getpid(),
                started_at=utcnow(), log_path=str(log_path), environment=environment(device),
                **store.lease_values(owner, settings.lease_s))
        except store.IllegalTransition as exc:
            print(f"[bitsmith] run {run_id}: not claimed ({exc}); another executor has it", file=sys.stderr)
            return store.get_run(db, run_id).status
        with _heartbeat(db, run_id, attempt, owner, settings.lease_s) as lost:
            return _run_attempt(db, run, spec, settings, attempt, lost)


def _run_attempt(db: Any, run: RunRecord, spec: Any, settings: Settings, attempt: int,
                 lost: threading.Event) -> str:
    """Call the worker and record how the attempt ended, fenced by `attempt`."""
    fence = dict(expected_from={RUNNING}, expected_attempt=attempt)
    try:
        ctx = _build_context(db, run, spec, settings, lost)
        outputs = load_worker(run.kind).run(spec, ctx)
        ctx.flush_metrics()
        check_returned_outputs(run.kind, outputs.artifacts)  # before anything is registered
        produced = {role: _register_output(db, settings, run, out.path, out.kind, out.metadata, move=True)
                    for role, out in outputs.artifacts.items()}
        finals = [(k, None, float(v)) for k, v in (outputs.metrics or {}).items()]
        store.complete_run(db, run.id, attempt=attempt, outputs=produced, metrics=finals)
        print(f"[bitsmith] run {run.id} succeeded", file=sys.stderr)
        return SUCCEEDED
    except (JobCancelled, KeyboardInterrupt, store.IllegalTransition) as exc:
        if lost.is_set() or isinstance(exc, store.IllegalTransition):
            return _lease_lost(db, run.id, attempt)
        message = str(exc) if isinstance(exc, JobCancelled) else "interrupted (KeyboardInterrupt)"
        with contextlib.suppress(store.IllegalTransition):
            store.transition(db, run.id, CANCELLED, message=message, finished_at=utcnow(), **fence)
        if isinstance(exc, KeyboardInterrupt):
            raise
        return CANCELLED
    except BaseException as exc:  # recorded, then the run is failed; nothing is swallowed silently
        tb = traceback.format_exc()
        print(tb, file=sys.stderr)
        if lost.is_set():
            return _lease_lost(db, run.id, attempt)
        if isinstance(exc, SystemExit):  # the process is being stopped from outside (Ray ends a dead driver's tasks)
            store.retry_or_fail(db, run, f"worker process was stopped on attempt {attempt} "  # fenced on `attempt`
                                         f"(SystemExit: {exc.code}; e.g. its submitting process died)")
            raise
        reason = "timed out" if isinstance(exc, JobTimeout) else type(exc).__name__
        try:
            store.transition(db, run.id, FAILED, message=reason, error=f"{type(exc).__name__}: {exc}",
                             traceback=tb, finished_at=utcnow(), **fence)
        except store.IllegalTransition:
            return _lease_lost(db, run.id, attempt)
        return FAILED


def _await_joined(db: Any, run: RunRecord) -> str | None:
    """Wait for the identical in-flight run `run` joined; its status once it is its cache hit (or cancelled),
    None when the joined run did not succeed and `run` must run itself. The wait is only in the store: if this
    process dies, `run` is an orphan that `runs recover` adopts, and its next executor waits again."""
    print(f"[bitsmith] run {run.id} waits for identical in-flight run {run.joins}", file=sys.stderr)
    while True:
        joined, own = store.get_run(db, run.joins), store.get_run(db, run.id)
        if own.status in TERMINAL_STATUSES:  # e.g. cancelled while it waited
            return own.status
        if joined.status == SUCCEEDED:
            try:
                store.record_join_hit(db, run.id, joined.id)
            except store.IllegalTransition:  # another executor of this run recorded it first
                return store.get_run(db, run.id).status
            print(f"[bitsmith] run {run.id} is a cache hit of {joined.id}", file=sys.stderr)
            return SUCCEEDED
        if joined.status in TERMINAL_STATUSES:
            print(f"[bitsmith] run {run.id}: joined run {joined.id} {joined.status}; running it itself",
                  file=sys.stderr)
            return None
        time.sleep(JOIN_POLL_S)


def _lease_lost(db: Any, run_id: str, attempt: int) -> str:
    current = store.get_run(db, run_id)
    print(f"[bitsmith] run {run_id}: attempt {attempt} lost its lease (the run is now {current.status}, attempt "
          f"{current.attempt}); this attempt records nothing", file=sys.stderr)
    return current.status


@contextlib.contextmanager
def _heartbeat(db: Any, run_id: str, attempt: int, owner: str, lease_s: float) -> Iterator[threading.Event]:
    """Renew the attempt's lease every lease_s/3 seconds in a daemon thread; the event is set once it is lost."""
    lost, stop = threading.Event(), threading.Event()

    def beat() -> None:
        last_ok = time.monotonic()
        while not stop.wait(lease_s / 3):
            try:
                if not store.renew_lease(db, run_id, attempt=attempt, owner=owner, lease_s=lease_s):
                    break
                last_ok = time.monotonic()
            except Exception as exc:  # the database is unreachable: keep trying until the lease would be gone
                log.warning("run %s: heartbeat failed: %s", run_id, exc)
                if time.monotonic() - last_ok > lease_s:
                    break
        if not stop.is_set():
            lost.set()

    thread = threading.Thread(target=beat, name=f"bitsmith-heartbeat-{run_id[:10]}", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join(timeout=5)


def _ray_node_id() -> str | None:
    if not _inside_ray_task():
        return None
    import ray

    return ray.get_runtime_context().get_node_id()[:12]


def _build_context(db: Any, run: RunRecord, spec: Any, settings: Settings, lost: threading.Event) -> RunContext:
    cache_dir = settings.home / "cache"
    inputs: dict[str, InputArtifact] = {}
    for edge in store.run_inputs(db, run.id):
        rec = store.get_artifact(db, edge.digest)
        path = materialize(settings.artifact_root, rec.digest, cache_dir, digest_version=rec.digest_version)
        inputs[edge.role] = InputArtifact(digest=rec.digest, kind=rec.kind, path=path, metadata=rec.metadata)
    resume_path, resume_step = _find_resume_checkpoint(db, run, settings)
    work_dir = settings.runs_dir / run.id / f"attempt-{run.attempt}"
    work_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + spec.timeout_s if spec.timeout_s else None
    last_check = [0.0, False]

    def should_cancel() -> bool:
        if lost.is_set():  # another attempt holds the run now: stop at the next progress update
            return True
        if time.monotonic() - last_check[0] > 2.0:
            last_check[0] = time.monotonic()
            last_check[1] = store.get_run(db, run.id).cancel_requested
        return bool(last_check[1])

    def save_checkpoint(path: Path, step: int, meta: dict[str, Any]) -> None:
        if lost.is_set():
            raise JobCancelled(f"run {run.id}: attempt {run.attempt} lost its lease")
        role = f"{CHECKPOINT_ROLE}{step:09d}"
        digest = _register_output(db, settings, run, path, "checkpoint", {**meta, "step": step}, move=False)
        store.add_attempt_outputs(db, run.id, attempt=run.attempt, outputs={role: digest})
        print(f"[bitsmith] checkpoint at step {step}: {digest[:12]}", file=sys.stderr)

    def sink(batch: list[tuple[str, int | None, float]]) -> None:
        store.log_attempt_metrics(db, run.id, attempt=run.attempt, batch=batch)

    def derived_lookup(key: str, kind: str) -> Path | None:
        found = store.find_artifacts(db, kind=kind, where=[f"meta.derived_key==\"{key}\""], limit=1)
        if not found:
            return None
        store.add_attempt_inputs(db, run.id, attempt=run.attempt, inputs={f"derived/{kind}": found[0].digest})
        print(f"[bitsmith] reusing derived {kind} {found[0].digest[:12]} (key {key[:12]})", file=sys.stderr)
        return materialize(settings.artifact_root, found[0].digest, cache_dir)

    def derived_store(key: str, kind: str, path: Path) -> Path:
        digest = _register_output(db, settings, run, path, kind, {"derived_key": key}, move=True)
        store.add_attempt_outputs(db, run.id, attempt=run.attempt, outputs={f"derived/{kind}": digest})
        return materialize(settings.artifact_root, digest, cache_dir)

    pool_factory = None
    if _inside_ray_task():
        from .actors import ray_actor_pool

        pool_factory = ray_actor_pool
    return RunContext(run_id=run.id, seed=spec.seed, work_dir=work_dir, inputs=inputs, metric_sink=sink,
                      checkpoint_sink=save_checkpoint, resume_checkpoint=resume_path, resume_step=resume_step,
                      deadline=deadline, should_cancel=should_cancel, attempt=run.attempt, cpus=spec.resources.cpus,
                      actor_pool_factory=pool_factory, derived_lookup=derived_lookup,
                      derived_store=derived_store, job_kind=run.kind)


def _inside_ray_task() -> bool:
    """True when this body runs as a Ray task (then fan-out uses Ray actors)."""
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def _register_output(db: Any, settings: Settings, run: RunRecord, path: Path, kind: str, metadata: dict[str, Any],
                     *, move: bool) -> str:
    """Store an attempt's output and its (unnamed) artifact row; only the fenced run_outputs edge binds it to
    the run, and `RUN_NAME/ROLE` names come from those edges once the run succeeded."""
    return register_path(db, settings, path, kind=kind, name=None, metadata=metadata,
                         producer_run_id=run.id, move=move).digest


def _find_resume_checkpoint(db: Any, run: RunRecord, settings: Settings) -> tuple[Path | None, int | None]:
    """The newest checkpoint of this run's earlier attempts, else of an earlier failed run with the same key."""
    earlier = [r for r in store.list_runs(db, cache_key=run.cache_key, limit=20)
               if r.id != run.id and r.status in (FAILED, CANCELLED)]
    candidates = ([run] if run.attempt > 1 else []) + earlier
    for candidate in candidates:
        checkpoints = [e for e in store.run_outputs(db, candidate.id) if e.role.startswith(CHECKPOINT_ROLE)]
        if checkpoints:
            best = max(checkpoints, key=lambda e: int(e.role[len(CHECKPOINT_ROLE):]))
            path = materialize(settings.artifact_root, best.digest, settings.home / "cache")
            print(f"[bitsmith] resuming from checkpoint {best.digest[:12]} of run {candidate.id} ({best.role})",
                  file=sys.stderr)
            return path, int(best.role[len(CHECKPOINT_ROLE):])
    return None, None


class _Tee:
    def __init__(self, *streams: TextIO):
        self.streams = streams

    def write(self, data: str) -> int:
        for s in self.streams:
            try:
                s.write(data)
                s.flush()
            except (OSError, ValueError):
                pass
        return len(data)

    def flush(self) -> None:
        for s in self.streams:
            with contextlib.suppress(OSError, ValueError):
                s.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.streams[0].fileno()


@contextlib.contextmanager
def _tee_output(log_path: Path) -> Iterator[None]:
    """Copy this run's stdout, stderr and log records into its log file (as well as the console)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8", buffering=1) as f:
        old_out, old_err = sys.stdout, sys.stderr
        handler = logging.StreamHandler(f)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        sys.stdout, sys.stderr = _Tee(old_out, f), _Tee(old_err, f)  # type: ignore[assignment]
        try:
            yield
        finally:
            sys.stdout, sys.stderr = old_out, old_err
            root.removeHandler(handler)
