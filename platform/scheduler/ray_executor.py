"""The Ray executor: each run is a Ray task with its resources, retries, timeout and cancellation."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from .. import store
from ..config import Settings
from ..store.records import CANCELLED, FAILED, TERMINAL_STATUSES
from .execute import execute_run, utcnow

log = logging.getLogger(__name__)
POLL_S = 0.2
CONTROL_EVERY_S = 2.0


def ensure_ray(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    """Join the cluster at `address`, or start an embedded local Ray instance (once per process)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=log_to_driver)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)


def _task_options(run: Any) -> dict[str, Any]:
    res = run.spec.get("resources", {})
    opts: dict[str, Any] = {"num_cpus": res.get("cpus", 1.0), "num_gpus": res.get("gpus", 0.0),
                            "max_retries": run.max_retries, "retry_exceptions": False}
    if res.get("memory_bytes"):
        opts["memory"] = int(res["memory_bytes"])
    return opts


def finish_if_unfinished(db: Any, run_id: str, status: str, reason: str) -> None:
    """Record a terminal status the task body could not record itself (worker died, cancelled, timeout)."""
    run = store.get_run(db, run_id)
    if run.status in TERMINAL_STATUSES:
        return
    store.transition(db, run_id, status, message=reason, error=reason if status == FAILED else None,
                     finished_at=utcnow())


def run_on_ray(run_ids: list[str], settings: Settings, *,
               on_finish: Callable[[str, str], None] | None = None,
               max_in_flight: int | None = None) -> dict[str, str]:
    """Dispatch runs as Ray tasks (at most `max_in_flight` at once) and watch them to the end.

    Returns run id -> final status.
    """
    import ray

    ensure_ray(settings.ray_address)
    db = store.open_database(settings.db_url)
    remote = ray.remote(execute_run)
    refs: dict[Any, str] = {}
    waiting = list(run_ids)
    finals: dict[str, str] = {}

    def dispatch() -> list[Any]:
        new = []
        while waiting and (max_in_flight is None or len(refs) - len(finals) < max_in_flight):
            run_id = waiting.pop(0)
            run = store.get_run(db, run_id)
            ref = remote.options(**_task_options(run), name=f"bitsmith:{run.kind}:{run_id[:10]}").remote(
                run_id, settings)
            refs[ref] = run_id
            new.append(ref)
        return new

    cancelled_refs: set[Any] = set()
    pending = dispatch()
    try:
        _watch(db, refs, pending, finals, cancelled_refs, on_finish, dispatch)
    except KeyboardInterrupt:  # the submitting process is stopping: don't leave runs "running" forever
        for ref, run_id in refs.items():
            if run_id not in finals:
                ray.cancel(ref, force=True)
                finish_if_unfinished(db, run_id, CANCELLED, "interrupted: the submitting process was stopped")
        for run_id in waiting:
            finish_if_unfinished(db, run_id, CANCELLED, "interrupted before it was dispatched")
        raise
    return finals


def _watch(db: Any, refs: dict[Any, str], pending: list[Any], finals: dict[str, str], cancelled_refs: set[Any],
           on_finish: Callable[[str, str], None] | None, refill: Callable[[], list[Any]]) -> None:
    import ray
    from ray.exceptions import RayTaskError

    last_control = time.monotonic()
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
        for ref in done:
            run_id = refs[ref]
            try:
                finals[run_id] = ray.get(ref)
            except Exception as exc:  # the task died or was cancelled: record why
                if ref in cancelled_refs:
                    finals[run_id] = store.get_run(db, run_id).status
                else:
                    run = store.get_run(db, run_id)
                    if isinstance(exc, RayTaskError):  # the task body itself raised outside the worker
                        reason = f"task body raised: {str(exc)[-800:]}"
                    else:
                        reason = (f"worker process died on attempt {run.attempt} (retries {run.max_retries} "
                                  f"used up): {type(exc).__name__}: {str(exc)[:500]}")
                    finish_if_unfinished(db, run_id, FAILED, reason)
                    finals[run_id] = FAILED
            if on_finish:
                on_finish(run_id, finals[run_id])
        if done:
            pending = list(pending) + refill()
        if pending and time.monotonic() - last_control > CONTROL_EVERY_S:
            last_control = time.monotonic()
            for ref in pending:
                if ref in cancelled_refs:
                    continue
                run = store.get_run(db, refs[ref])
                timeout_s = run.spec.get("timeout_s")
                if run.cancel_requested:
                    ray.cancel(ref, force=True)
                    cancelled_refs.add(ref)
                    finish_if_unfinished(db, run.id, CANCELLED, "cancelled by user")
                elif timeout_s and run.started_at and time.time() - run.started_at.timestamp() > timeout_s:
                    ray.cancel(ref, force=True)
                    cancelled_refs.add(ref)
                    finish_if_unfinished(db, run.id, FAILED, f"timed out after {timeout_s} s (timeout_s)")


def run_locally(run_ids: list[str], settings: Settings, *,
                on_finish: Callable[[str, str], None] | None = None,
                max_in_flight: int | None = None) -> dict[str, str]:
    """The local executor: the same task body, in this process, one run after another."""
    finals = {}
    for run_id in run_ids:
        finals[run_id] = execute_run(run_id, settings)
        if on_finish:
            on_finish(run_id, finals[run_id])
    return finals


EXECUTORS = {"ray": run_on_ray, "local": run_locally}
