"""The Ray executor: each run is a Ray task with its resources, retries, timeout and cancellation."""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import store
from ..config import Settings
from ..errors import UsageError
from ..store.records import CANCELLED, FAILED, QUEUED, RUNNING, TERMINAL_STATUSES
from .execute import execute_run, utcnow

log = logging.getLogger(__name__)
POLL_S = 0.2
CONTROL_EVERY_S = 2.0
# Ray's GCS keeps the events of the last 100,000 tasks by default (~4 KB each, only for Ray's state API; the store
# records every run), so an embedded instance's gcs_server grows ~4 MiB per 1,000 jobs (measured over 10,000 no-op
# tasks: 43 -> 83 MiB). An embedded instance keeps the last TASK_EVENTS_KEPT (measured: 43 -> 57 MiB, +2 MiB over the
# last 5,000); RAY_task_events_max_num_task_in_gcs overrides it. A joined cluster keeps its own setting.
TASK_EVENTS_KEPT = 1000
TASK_EVENTS_ENV = "RAY_task_events_max_num_task_in_gcs"


@contextlib.contextmanager
def dispatching(db: Any, run_ids: list[str], lease_s: float) -> Iterator[None]:
    """Hold the dispatch lease of `run_ids` while they wait to be claimed: this process is their dispatcher
    (renewed every lease_s/3 from a daemon thread); if it dies, they become orphans `runs recover` adopts."""
    owner, stop = store.lease_owner(), threading.Event()
    store.hold_dispatch(db, run_ids, owner=owner, lease_s=lease_s)

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            try:
                store.hold_dispatch(db, run_ids, owner=owner, lease_s=lease_s)
            except Exception as exc:  # the database is unreachable: try again at the next beat
                log.warning("dispatch lease of %d runs: renewal failed: %s", len(run_ids), exc)

    thread = threading.Thread(target=renew, name="bitsmith-dispatch-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True,
               resources: dict[str, float] | None = None) -> None:
    """Join the cluster at `address`, or start an embedded local Ray instance (once per process) with `num_cpus`
    and the custom node `resources` (default: `BITSMITH_RAY_RESOURCES`); a cluster's resources are its own."""
    import ray

    from .admission import env_node_resources

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=log_to_driver)
    if address:
        ray.init(address=address, **kwargs)
    else:
        if TASK_EVENTS_ENV not in os.environ:  # keep the GCS flat on a long-lived instance (see TASK_EVENTS_KEPT)
            kwargs["_system_config"] = {"task_events_max_num_task_in_gcs": TASK_EVENTS_KEPT}
        ray.init(num_cpus=num_cpus, resources=resources if resources is not None else env_node_resources(), **kwargs)


def _task_options(run: Any) -> dict[str, Any]:
    """Ray's own retries are off: bitsmith retries a lost attempt itself, so the store stays the one ledger."""
    res = run.spec.get("resources", {})
    opts: dict[str, Any] = {"num_cpus": res.get("cpus", 1.0), "num_gpus": res.get("gpus", 0.0),
                            "max_retries": 0, "retry_exceptions": False}
    if res.get("memory_bytes"):
        opts["memory"] = int(res["memory_bytes"])
    if res.get("custom"):
        opts["resources"] = {str(k): float(v) for k, v in res["custom"].items()}
    return opts


def cluster_hosts() -> set[str]:
    """Host names of the alive nodes of the connected Ray cluster."""
    import ray

    return {n.get("NodeManagerHostname") or n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}


def check_store_fits_cluster(db: Any, hosts: set[str]) -> None:
    """Refuse an embedded SQLite store when the cluster spans several machines (each would see its own file)."""
    if db.is_sqlite and len(hosts) > 1:
        shown = ", ".join(sorted(hosts)[:4]) + (", ..." if len(hosts) > 4 else "")
        raise UsageError(
            f"BITSMITH_DB_URL: {store.engine.mask_url(db.url)} is an embedded SQLite file, but the Ray cluster spans "
            f"{len(hosts)} machines ({shown}); expected a PostgreSQL URL every node reaches, e.g. "
            "postgresql+psycopg://USER@HOST:5432/DB (SQLite only serves Ray nodes on one machine)",
            hint="set BITSMITH_DB_URL on every node, run `bitsmith db upgrade` once; see infra/README.md")


def finish_if_unfinished(db: Any, run_id: str, status: str, reason: str) -> None:
    """Record a terminal status the task body could not record itself (worker died, cancelled, timeout)."""
    run = store.get_run(db, run_id)
    if run.status in TERMINAL_STATUSES:
        return
    store.transition(db, run_id, status, message=reason, error=reason if status == FAILED else None,
                     finished_at=utcnow())


@dataclass
class _Dispatch:
    """The driver's view of one batch: runs waiting, Ray tasks in flight, final statuses."""

    db: Any
    settings: Settings
    remote: Any
    waiting: deque[str]
    max_in_flight: int | None
    on_finish: Callable[[str, str], None] | None
    in_flight: dict[Any, str] = field(default_factory=dict)   # ref -> run id
    finals: dict[str, str] = field(default_factory=dict)
    starts: dict[str, int] = field(default_factory=dict)      # run id -> tasks dispatched for it

    def fill(self) -> None:
        """Dispatch waiting runs while slots are free. A run that joins a run still waiting here goes after it:
        its task would hold a slot while it waits for that run, which then might never get one."""
        deferred = []
        while self.waiting and (self.max_in_flight is None or len(self.in_flight) < self.max_in_flight):
            run_id = self.waiting.popleft()
            run = store.get_run(self.db, run_id)
            if run.status in TERMINAL_STATUSES:  # e.g. cancelled while waiting
                self.finish(run_id, run.status)
                continue
            if run.joins is not None and run.joins in self.waiting:
                deferred.append(run_id)
                continue
            self.starts[run_id] = self.starts.get(run_id, 0) + 1
            ref = self.remote.options(**_task_options(run), name=f"bitsmith:{run.kind}:{run_id[:10]}").remote(
                run_id, self.settings)
            self.in_flight[ref] = run_id
        self.waiting.extend(deferred)

    def finish(self, run_id: str, status: str) -> None:
        self.finals[run_id] = status
        if self.on_finish:
            self.on_finish(run_id, status)

    def drop(self, ref: Any) -> None:
        """Stop watching `ref` and kill its task (it may already be gone with its node)."""
        import ray

        self.in_flight.pop(ref, None)
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)

    def collect(self, ref: Any) -> None:
        """A task ended: take its status, or retry/fail a run whose worker or node died under it."""
        import ray
        from ray.exceptions import RayTaskError

        run_id = self.in_flight.pop(ref)
        try:
            status = ray.get(ref)
        except RayTaskError as exc:  # the task body itself raised outside the worker
            finish_if_unfinished(self.db, run_id, FAILED, f"task body raised: {str(exc)[-800:]}")
            status = FAILED
        except Exception as exc:  # the worker process or its node died
            status = self.lost(run_id, f"{type(exc).__name__}: {str(exc)[:300]}")
        if status == QUEUED:
            self.waiting.appendleft(run_id)
        else:  # terminal, or (rarely) running under another executor that claimed it first
            self.finish(run_id, status)

    def lost(self, run_id: str, cause: str) -> str:
        """The task of `run_id` died (`cause`): re-queue the run while its retries last, else fail it."""
        run = store.get_run(self.db, run_id)
        if run.status == RUNNING:
            outcome = store.retry_or_fail(self.db, run, f"worker process died on attempt {run.attempt} ({cause})")
            if outcome is not None:
                log.warning("run %s: %s", run_id, outcome.reason)
            return store.get_run(self.db, run_id).status
        if run.status == QUEUED and self.starts.get(run_id, 0) > run.max_retries:  # died before it could claim
            finish_if_unfinished(self.db, run_id, FAILED, f"worker process died on attempt {run.attempt + 1} "
                                                          f"({cause}); retries used up ({run.max_retries})")
            return FAILED
        return store.get_run(self.db, run_id).status

    def control(self) -> None:
        """Cancellation, timeouts, and runs whose lease ran out while Ray still shows their task."""
        for ref, run_id in list(self.in_flight.items()):
            run = store.get_run(self.db, run_id)
            timeout_s = run.spec.get("timeout_s")
            if run.cancel_requested:
                self.drop(ref)
                finish_if_unfinished(self.db, run_id, CANCELLED, "cancelled by user")
                self.finish(run_id, store.get_run(self.db, run_id).status)
            elif timeout_s and run.started_at and time.time() - run.started_at.timestamp() > timeout_s:
                self.drop(ref)
                finish_if_unfinished(self.db, run_id, FAILED, f"timed out after {timeout_s} s (timeout_s)")
                self.finish(run_id, store.get_run(self.db, run_id).status)
        watched = {run_id: ref for ref, run_id in self.in_flight.items()}
        for outcome in store.recover_expired(self.db, run_ids=list(watched)):
            log.warning("run %s: %s", outcome.run.id, outcome.reason)
            self.drop(watched[outcome.run.id])
            if outcome.action == store.ledger.REQUEUED:
                self.waiting.appendleft(outcome.run.id)
            else:
                self.finish(outcome.run.id, outcome.run.status)

    def cancel_all(self, reason: str) -> None:
        for ref, run_id in list(self.in_flight.items()):
            self.drop(ref)
            finish_if_unfinished(self.db, run_id, CANCELLED, reason)
        for run_id in self.waiting:
            finish_if_unfinished(self.db, run_id, CANCELLED, "interrupted before it was dispatched")
        self.waiting.clear()


def run_on_ray(run_ids: list[str], settings: Settings, *,
               on_finish: Callable[[str, str], None] | None = None,
               max_in_flight: int | None = None) -> dict[str, str]:
    """Dispatch runs as Ray tasks (at most `max_in_flight` at once) and watch them to the end.

    A run whose worker or node dies (Ray reports it, or its lease runs out) is re-queued and dispatched
    again while its `retries` last. Returns run id -> final status.
    """
    import ray

    ensure_ray(settings.ray_address)
    db = store.open_database(settings.db_url)
    check_store_fits_cluster(db, cluster_hosts())
    batch = _Dispatch(db=db, settings=settings, remote=ray.remote(execute_run), waiting=deque(run_ids),
                      max_in_flight=max_in_flight, on_finish=on_finish)
    try:
        with dispatching(db, run_ids, settings.lease_s):
            _drive(batch)
    except KeyboardInterrupt:  # the submitting process is stopping: don't leave runs "running" forever
        batch.cancel_all("interrupted: the submitting process was stopped")
        raise
    return batch.finals


def _drive(batch: _Dispatch) -> None:
    """Keep the batch's slots full until every run ended."""
    import ray

    batch.fill()
    last_control = time.monotonic()
    while batch.in_flight:
        done, _ = ray.wait(list(batch.in_flight), num_returns=1, timeout=POLL_S)  # refill a slot at once
        for ref in done:
            batch.collect(ref)
        if time.monotonic() - last_control > CONTROL_EVERY_S:
            last_control = time.monotonic()
            batch.control()
        batch.fill()


def run_locally(run_ids: list[str], settings: Settings, *,
                on_finish: Callable[[str, str], None] | None = None,
                max_in_flight: int | None = None) -> dict[str, str]:
    """The local executor: the same task body, in this process, one run after another."""
    finals = {}
    with dispatching(store.open_database(settings.db_url), run_ids, settings.lease_s):
        for run_id in run_ids:
            finals[run_id] = execute_run(run_id, settings)
            if on_finish:
                on_finish(run_id, finals[run_id])
    return finals


EXECUTORS = {"ray": run_on_ray, "local": run_locally}
