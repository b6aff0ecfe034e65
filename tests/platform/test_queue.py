"""The store's queue and dispatcher lease (SQLite and PostgreSQL), and admission by resources (no Ray needed)."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bitsmith.platform import store
from bitsmith.platform.scheduler.admission import fits, needs_text, run_needs, waiting_reason
from bitsmith.platform.store import queue


def _queued(db, priority: int = 0, spec: dict | None = None, to_queue: bool = True, key: str = "k"):
    return store.create_run(db, kind="noop", name=None, spec=spec or {"kind": "noop"}, spec_hash="h" * 64,
                            cache_key=key, seed=0, code_version={}, priority=priority, to_queue=to_queue)


def test_queue_order_is_priority_then_age_and_only_unclaimed_runs_are_taken(db) -> None:
    low, high, low2 = _queued(db, 0), _queued(db, 5), _queued(db, 0)
    held = _queued(db, 9, to_queue=False)  # dispatched by this process (a --wait submitter): not the queue's
    assert [r.id for r in queue.queued_runs(db)] == [held.id, high.id, low.id, low2.id]
    assert queue.claim_queue(db, owner="host:1", lease_s=30) == 3
    assert [r.id for r in queue.queued_runs(db, owner="host:1")] == [high.id, low.id, low2.id]
    assert queue.claim_queue(db, owner="host:2", lease_s=30) == 0  # held by a live dispatcher's lease
    assert queue.claim_queue(db, owner="host:1", lease_s=30, renew=False) == 0
    assert queue.queue_length(db) == 4
    store.request_cancel(db, low.id)  # a queued run is cancelled at once and leaves the queue
    assert [r.id for r in queue.queued_runs(db, owner="host:1")] == [high.id, low2.id]


def test_a_lapsed_dispatch_lease_is_taken_over(db) -> None:
    run = _queued(db)
    assert queue.claim_queue(db, owner="host:1", lease_s=1) == 1
    time.sleep(1.2)
    assert queue.claim_queue(db, owner="host:2", lease_s=30) == 1
    assert store.get_run(db, run.id).lease_owner == "host:2"


def test_one_dispatcher_per_store_a_second_is_refused_naming_the_holder(db) -> None:
    first = queue.acquire_dispatcher(db, owner="elsewhere:1", lease_s=30, ray_address="10.0.0.1:6379")
    assert first.alive and first.owner == "elsewhere:1"
    with pytest.raises(queue.DispatcherBusy, match="elsewhere:1 .*10.0.0.1:6379") as refused:
        queue.acquire_dispatcher(db, owner="elsewhere:2", lease_s=30, ray_address=None)
    assert refused.value.exit_code == 2
    assert queue.renew_dispatcher(db, owner="elsewhere:1", lease_s=30, state={"in_flight": 3})
    assert not queue.renew_dispatcher(db, owner="elsewhere:2", lease_s=30, state={})
    assert queue.get_dispatcher(db).state == {"in_flight": 3}
    queue.release_dispatcher(db, owner="elsewhere:2")  # not the holder: nothing happens
    assert queue.get_dispatcher(db).owner == "elsewhere:1"
    queue.release_dispatcher(db, owner="elsewhere:1")
    assert queue.get_dispatcher(db) is None


def test_a_dead_or_lapsed_dispatcher_is_replaced(db) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    queue.acquire_dispatcher(db, owner=store.lease_owner(pid=dead.pid), lease_s=30, ray_address=None)
    assert not queue.get_dispatcher(db).alive  # its process is gone on this host: no need to wait for the lease
    assert queue.acquire_dispatcher(db, owner="host:7", lease_s=1, ray_address=None).owner == "host:7"
    time.sleep(1.2)
    assert queue.acquire_dispatcher(db, owner="host:8", lease_s=30, ray_address=None).owner == "host:8"


def test_admission_says_what_a_run_waits_for() -> None:
    gpu = run_needs({"resources": {"cpus": 1, "gpus": 1}})
    assert gpu == {"CPU": 1.0, "GPU": 1.0} and needs_text(gpu) == "1 CPU, 1 GPU"
    assert run_needs({}) == {"CPU": 1.0} and run_needs({"resources": {"cpus": 0}}) == {}
    total = {"CPU": 2.0, "GPU": 1.0, "memory": 8 * 2**30}
    assert waiting_reason(gpu, {"CPU": 2.0, "GPU": 0.0}, total) == "needs 1 GPU, 0 free"
    assert waiting_reason(gpu, {"CPU": 2.0, "GPU": 1.0}, total) is None and fits(gpu, total)
    assert waiting_reason({"CPU": 4.0}, total, total) == "needs 4 CPU, the cluster has 2"
    big = run_needs({"resources": {"memory_bytes": 16 * 2**30}})
    assert waiting_reason(big, total, total) == "needs 16.0 GiB memory, the cluster has 8.0 GiB"


def test_many_runs_are_queued_at_once_and_identical_ones_join_the_first(db) -> None:
    running = _queued(db, key="busy")
    rows = [dict(kind="noop", name=None, spec={"kind": "noop"}, spec_hash="h" * 64, cache_key=key, seed=0,
                 code_version={}, tags=(), executor="ray", max_retries=0, inputs=None, sweep_id=None)
            for key in ("a", "b", "a", "busy")]
    queued = queue.enqueue_runs(db, rows, priority=3, chunk=2)
    stored = [store.get_run(db, r.id) for r in queued]
    assert [r.status for r in stored] == ["queued"] * 4 and {r.priority for r in stored} == {3}
    assert [r.lease_owner for r in stored] == [None] * 4  # waiting for the store's dispatcher
    assert [r.joins for r in stored] == [None, None, queued[0].id, running.id]
    assert [[e.to_status for e in store.run_events(db, r.id)] for r in stored] == [["queued"]] * 4
