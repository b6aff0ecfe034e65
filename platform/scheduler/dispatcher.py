"""The store's dispatcher: one long-lived process that admits queued runs onto one Ray instance.

`python -m bitsmith.platform.scheduler.dispatcher [--address ADDR]` (what `bitsmith scheduler start` and the
first `bitsmith submit` without `--wait` start). It holds the store's dispatcher lease (a second dispatcher is
refused, naming the holder), joins the Ray cluster at `--address` or starts an embedded instance it owns, and
each tick:

- renews its lease and the dispatch leases of the queued runs it holds, taking over queued runs nobody
  dispatches (new submissions, orphans of a dead dispatcher or runner);
- recovers running runs whose lease ran out or whose process is gone (re-queued while `retries` last, else
  failed: the ledger's compare-and-set transitions, so a run ends exactly once);
- admits queued runs in priority-then-age order whose resources (CPU, GPU, memory, custom) fit what is free,
  within each sweep's `max_concurrency` and at most `max_in_flight` Ray tasks, so Ray's own queue stays short;
- watches its Ray tasks: cancellation, timeouts, lost workers (the same `_Dispatch` as `--wait` runs use).

SIGTERM stops admitting and waits for the runs in flight, then releases the lease; a second SIGTERM exits at
once (those runs are then recovered through their leases by the next dispatcher). Queued runs stay queued.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .. import store
from ..config import Settings
from ..errors import BitsmithError
from ..store import queue
from ..store.records import QUEUED, RUNNING, RunRecord
from .admission import env_node_resources, parse_node_resources, run_needs, schedulable, subtract, waiting_reason
from .execute import execute_run
from .ray_executor import _Dispatch, _task_options, check_store_fits_cluster, cluster_hosts, ensure_ray

log = logging.getLogger("bitsmith.dispatcher")
CONTROL_EVERY_S = 1.0
REFRESH_EVERY_S = 0.5
TOTALS_EVERY_S = 5.0


@dataclass(frozen=True)
class DispatcherOptions:
    address: str | None = None   # the Ray cluster to join; None: an embedded instance this process owns
    max_in_flight: int = 64      # Ray tasks at once (bounds runs that ask for no resources)
    window: int = 256            # queued runs considered per admission pass, in queue order
    tick_s: float = 0.2
    num_cpus: int | None = None  # CPUs of the embedded instance (default: the machine's)
    resources: dict[str, float] | None = None  # custom resources of the embedded instance (BITSMITH_RAY_RESOURCES)


@dataclass
class Dispatcher:
    db: Any
    settings: Settings
    options: DispatcherOptions
    owner: str = field(default_factory=store.lease_owner)
    stopping: threading.Event = field(default_factory=threading.Event)
    force: threading.Event = field(default_factory=threading.Event)
    needs: dict[str, dict[str, float]] = field(default_factory=dict)   # in-flight run id -> resources it holds
    sweep_of: dict[str, str] = field(default_factory=dict)             # in-flight run id -> its sweep
    sweeps: dict[str, int | None] = field(default_factory=dict)        # sweep id -> max_concurrency
    reasons: dict[str, str] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)
    head: deque[RunRecord] = field(default_factory=deque)
    last_refresh: float = 0.0
    ended: int = 0
    address: str | None = None
    batch: Any = None                                                  # the `_Dispatch` of our Ray tasks

    def serve(self) -> int:
        """Hold the lease and dispatch until stopped; 0 on a clean stop, 1 when the lease was taken away."""
        import ray

        queue.acquire_dispatcher(self.db, owner=self.owner, lease_s=self.settings.lease_s,
                                 ray_address=self.options.address)
        try:
            ensure_ray(self.options.address, self.options.num_cpus, log_to_driver=False,
                       resources=self.options.resources)
            self.address = ray.get_runtime_context().gcs_address
            check_store_fits_cluster(self.db, cluster_hosts())
            self.batch = _Dispatch(db=self.db, settings=self.settings, remote=ray.remote(execute_run),
                                   waiting=deque(), max_in_flight=None, on_finish=self._on_finish)
            log.warning("dispatcher %s on Ray %s (%s)", self.owner, self.address,
                        "joined" if self.options.address else "embedded")
            return self._loop()
        finally:
            queue.release_dispatcher(self.db, owner=self.owner)
            if ray.is_initialized():
                ray.shutdown()

    def _loop(self) -> int:
        last_beat = last_control = last_totals = 0.0
        while not self.force.is_set() and not (self.stopping.is_set() and not self.batch.in_flight):
            now = time.monotonic()
            if now - last_totals > TOTALS_EVERY_S:
                last_totals = now
                self._read_totals()
            if now - last_beat > self.settings.lease_s / 3:
                last_beat = now
                if not self._heartbeat():
                    log.error("dispatcher %s lost the store's dispatcher lease; stopping", self.owner)
                    return 1
            if now - last_control > CONTROL_EVERY_S:
                last_control = now
                self._control()
            if not self.stopping.is_set():
                self._admit()
            self._collect()
        return 0

    # ------------------------------------------------------------------ leases, recovery, cancellation
    def _heartbeat(self) -> bool:
        if not queue.renew_dispatcher(self.db, owner=self.owner, lease_s=self.settings.lease_s,
                                      state=self.snapshot(), ray_address=self.address):
            return False
        queue.claim_queue(self.db, owner=self.owner, lease_s=self.settings.lease_s)
        return True

    def _control(self) -> None:
        """Cancellation and timeouts of our tasks; running runs anywhere whose attempt is dead."""
        self.batch.control()
        self._sync()
        watched = set(self.batch.in_flight.values())
        for outcome in store.recover_expired(self.db):
            log.warning("run %s: %s", outcome.run.id, outcome.reason)
        for run in queue.running_runs(self.db):
            if run.id not in watched and store.owner_is_gone(run.lease_owner):
                outcome = store.retry_or_fail(self.db, run, f"attempt {run.attempt} ({run.lease_owner}) is gone")
                if outcome is not None:
                    log.warning("run %s: %s", run.id, outcome.reason)

    def _sync(self) -> None:
        """Forget the resources of runs no longer in flight; runs our tasks handed back to the queue (a retry)
        are held by this dispatcher again."""
        in_flight = set(self.batch.in_flight.values())
        for run_id in [r for r in self.needs if r not in in_flight]:
            self.needs.pop(run_id, None)
            self.sweep_of.pop(run_id, None)
        if self.batch.waiting:
            store.hold_dispatch(self.db, list(self.batch.waiting), owner=self.owner, lease_s=self.settings.lease_s)
            self.batch.waiting.clear()
            self.head.clear()

    def _on_finish(self, run_id: str, status: str) -> None:
        if run_id in self.sweep_of:
            self._close_sweep_if_done(self.sweep_of[run_id])
        self.batch.starts.pop(run_id, None)
        self.batch.finals.pop(run_id, None)
        self.ended += 1
        print(f"[bitsmith-dispatcher] run {run_id} {status}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ admission
    def _read_totals(self) -> None:
        import ray

        self.total = schedulable(ray.cluster_resources())

    def free(self) -> dict[str, float]:
        """What is free for new runs: the cluster's total less what our runs hold; on a shared cluster (joined
        with an address) also no more than what Ray reports available."""
        used = self.used()
        free = {k: v - used.get(k, 0.0) for k, v in self.total.items()}
        if self.options.address:
            import ray

            available = schedulable(ray.available_resources())
            free = {k: min(v, available.get(k, 0.0)) for k, v in free.items()}
        return free

    def used(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for needs in self.needs.values():
            for k, v in needs.items():
                used[k] = used.get(k, 0.0) + v
        return used

    def _refresh_head(self) -> None:
        queue.claim_queue(self.db, owner=self.owner, lease_s=self.settings.lease_s, renew=False)
        self.head = deque(queue.queued_runs(self.db, owner=self.owner, limit=self.options.window))
        self.last_refresh = time.monotonic()

    def _admit(self) -> None:
        if len(self.batch.in_flight) >= self.options.max_in_flight:
            return
        if not self.head or time.monotonic() - self.last_refresh > REFRESH_EVERY_S:
            self._refresh_head()
        free, reasons, skipped = self.free(), {}, deque()
        per_sweep: dict[str, int] = {}
        for sweep_id in self.sweep_of.values():
            per_sweep[sweep_id] = per_sweep.get(sweep_id, 0) + 1
        while self.head and len(self.batch.in_flight) < self.options.max_in_flight:
            run = self.head.popleft()
            if run.id in self.needs:
                continue
            reason = self._blocked(run, free, per_sweep)
            if reason is not None:
                reasons[run.id] = reason
                skipped.append(run)
                continue
            needs = run_needs(run.spec)
            self._start(run, needs)
            free = subtract(free, needs)
            if run.sweep_id:
                per_sweep[run.sweep_id] = per_sweep.get(run.sweep_id, 0) + 1
        self.head.extendleft(reversed(skipped))
        self.reasons = reasons

    def _blocked(self, run: RunRecord, free: dict[str, float], per_sweep: dict[str, int]) -> str | None:
        """Why `run` cannot start now, or None."""
        if run.joins is not None and run.attempt == 0:
            joined = store.get_run(self.db, run.joins)
            if joined.status == QUEUED:  # its task would hold a slot waiting for a run that might never get one
                return f"waits for identical run {run.joins[:10]} to start"
        if run.sweep_id:
            limit = self._sweep_limit(run.sweep_id)
            if limit is not None and per_sweep.get(run.sweep_id, 0) >= limit:
                return f"sweep {run.sweep_id[:10]} is at its max_concurrency ({limit})"
        return waiting_reason(run_needs(run.spec), free, self.total)

    def _close_sweep_if_done(self, sweep_id: str) -> None:
        """Record a running sweep's status once none of its children is queued or running (a detached sweep has
        no driver to do it; a sweep's own driver records it again when it ends)."""
        from ..sweeps.results import sweep_results

        record = store.get_sweep(self.db, sweep_id)
        children = queue.get_runs(self.db, record.run_ids).values()
        if record.status != "running" or any(c.status in (QUEUED, RUNNING) for c in children):
            return
        _, rows = sweep_results(self.db, sweep_id)
        store.set_sweep_status(self.db, sweep_id, "succeeded" if all(r.status == "succeeded" for r in rows)
                               else "failed")

    def _sweep_limit(self, sweep_id: str) -> int | None:
        if sweep_id not in self.sweeps:
            self.sweeps[sweep_id] = (store.get_sweep(self.db, sweep_id).spec or {}).get("max_concurrency")
        return self.sweeps[sweep_id]

    def _start(self, run: RunRecord, needs: dict[str, float]) -> None:
        self.batch.starts[run.id] = self.batch.starts.get(run.id, 0) + 1
        ref = self.batch.remote.options(**_task_options(run), name=f"bitsmith:{run.kind}:{run.id[:10]}").remote(
            run.id, self.settings)
        self.batch.in_flight[ref] = run.id
        self.needs[run.id] = needs
        if run.sweep_id:
            self.sweep_of[run.id] = run.sweep_id

    def _collect(self) -> None:
        """Wait up to one tick for a task to end; take every ended task's status."""
        import ray

        if not self.batch.in_flight:
            time.sleep(self.options.tick_s)
            return
        refs = list(self.batch.in_flight)
        done, rest = ray.wait(refs, num_returns=1, timeout=self.options.tick_s)
        if done and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            done += more
        for ref in done:
            self.batch.collect(ref)
        self._sync()

    def snapshot(self) -> dict[str, Any]:
        """What `scheduler status` shows: resources total/used/free, runs in flight and queued."""
        return {"pid": self.owner.rsplit(":", 1)[-1], "total": self.total, "used": self.used(), "free": self.free(),
                "in_flight": len(self.batch.in_flight), "max_in_flight": self.options.max_in_flight,
                "queued": queue.queue_length(self.db), "ended": self.ended, "stopping": self.stopping.is_set(),
                "embedded": not self.options.address, "waiting": dict(list(self.reasons.items())[:50])}


def serve(settings: Settings, options: DispatcherOptions) -> int:
    """Run the dispatcher in this process until SIGTERM/SIGINT (twice: at once); its exit code."""
    dispatcher = Dispatcher(db=store.open_database(settings.db_url), settings=settings, options=options)

    def on_signal(signum: int, frame: Any) -> None:
        if dispatcher.stopping.is_set():
            dispatcher.force.set()
        else:
            log.warning("dispatcher: stopping (no new runs; waiting for the runs in flight)")
            dispatcher.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return dispatcher.serve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitsmith-dispatcher")
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: BITSMITH_RAY_ADDRESS, "
                                                        "else an embedded instance)")
    parser.add_argument("--max-in-flight", type=int, default=DispatcherOptions.max_in_flight)
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray instance")
    parser.add_argument("--resources", default=None, help="custom resources of the embedded Ray instance, JSON such "
                                                          "as '{\"accel\": 1}' (default: BITSMITH_RAY_RESOURCES)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = Settings.from_env(ray_address=args.address)
        resources = (parse_node_resources(args.resources, "--resources") if args.resources is not None
                     else env_node_resources())
        return serve(settings, DispatcherOptions(address=settings.ray_address, max_in_flight=args.max_in_flight,
                                                 num_cpus=args.num_cpus, resources=resources))
    except BitsmithError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
