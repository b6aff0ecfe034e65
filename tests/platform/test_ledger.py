"""The job ledger on real SQLite and PostgreSQL: leases, heartbeats, fencing, recovery of lost attempts."""
from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from bitsmith.platform import store
from bitsmith.platform.config import Settings, default_lease_s
from bitsmith.platform.errors import UsageError
from bitsmith.platform.scheduler.execute import execute_run
from bitsmith.platform.scheduler.ray_executor import check_store_fits_cluster
from bitsmith.platform.scheduler.submit import record_submission
from bitsmith.platform.specs import parse_spec
from bitsmith.platform.store.records import FAILED, QUEUED, RUNNING, SUCCEEDED
from bitsmith.platform.store.schema import utcnow


def make_run(db, retries: int):
    return store.create_run(db, kind="noop", name=None, spec={"kind": "noop"}, spec_hash="h" * 64, cache_key="k",
                            seed=0, code_version={}, tags=(), executor="local", max_retries=retries, inputs={})


def claim(db, run, owner: str, lease_s: float = 30.0):
    return store.transition(db, run.id, RUNNING, expected_from={QUEUED}, expected_attempt=run.attempt,
                            attempt=run.attempt + 1, **store.lease_values(owner, lease_s))


def an_artifact(db, text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()
    store.register_artifact(db, digest=digest, kind="result", name=None, uri=f"file:///x/{text}", size_bytes=1,
                            is_dir=False, metadata={}, producer_run_id=None)
    return digest


def test_only_the_holding_attempt_renews_its_lease(db):
    run = claim(db, make_run(db, retries=1), "host-a:1")
    assert run.lease_owner == "host-a:1" and run.lease_expires_at > utcnow()
    before = run.lease_expires_at
    time.sleep(0.01)
    assert store.renew_lease(db, run.id, attempt=1, owner="host-a:1", lease_s=30)
    assert store.get_run(db, run.id).lease_expires_at > before
    assert not store.renew_lease(db, run.id, attempt=2, owner="host-a:1", lease_s=30)
    assert not store.renew_lease(db, run.id, attempt=1, owner="host-b:1", lease_s=30)


def test_expired_lease_requeues_while_retries_last_then_fails_with_the_reason(db):
    run = claim(db, make_run(db, retries=1), "host-a:1", lease_s=5)
    assert store.recover_expired(db) == []  # still inside its lease: nothing happens
    (first,) = store.recover_expired(db, after_s=10)
    assert first.action == "requeued" and "lease expired" in first.reason and "host-a:1" in first.reason
    again = store.get_run(db, run.id)
    assert again.status == QUEUED and again.attempt == 1
    assert again.lease_owner == store.lease_owner() and again.lease_expires_at > utcnow()  # its new dispatcher
    claim(db, again, "host-b:2", lease_s=5)
    (second,) = store.recover_expired(db, after_s=20)
    final = store.get_run(db, run.id)
    assert second.action == "failed" and final.status == FAILED and final.attempt == 2
    assert "retries used up (1)" in final.error and "lease expired" in final.error
    history = [(e.from_status, e.to_status, e.attempt) for e in store.run_events(db, run.id)]
    assert history == [(None, QUEUED, 0), (QUEUED, RUNNING, 1), (RUNNING, QUEUED, 1), (QUEUED, RUNNING, 2),
                       (RUNNING, FAILED, 2)]


def test_a_lost_attempt_records_nothing_and_the_winner_records_all_at_once(db):
    run = claim(db, make_run(db, retries=1), "host-a:1", lease_s=1)
    store.recover_expired(db, after_s=5)
    claim(db, store.get_run(db, run.id), "host-b:2")  # attempt 2 holds the run now
    stale, fresh = an_artifact(db, "stale"), an_artifact(db, "fresh")
    with pytest.raises(store.IllegalTransition, match="attempt 1 no longer holds it"):
        store.complete_run(db, run.id, attempt=1, outputs={"result": stale}, metrics=[("m", None, 1.0)])
    with pytest.raises(store.IllegalTransition, match="lost its lease"):
        store.transition(db, run.id, FAILED, expected_from={RUNNING}, expected_attempt=1)
    assert store.run_outputs(db, run.id) == [] and store.get_metrics(db, run.id) == []
    done = store.complete_run(db, run.id, attempt=2, outputs={"result": fresh}, metrics=[("m", None, 2.0)])
    assert done.status == SUCCEEDED and done.lease_expires_at is None
    assert [(e.role, e.digest) for e in store.run_outputs(db, run.id)] == [("result", fresh)]
    assert store.final_metrics(db, [run.id])[run.id] == {"m": 2.0}


def test_owner_on_this_host_without_its_process_is_gone():
    import os
    import socket
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    assert store.owner_is_gone(f"{host}:{int(child.stdout)}")
    assert not store.owner_is_gone(f"{host}:{os.getpid()}")
    assert not store.owner_is_gone(f"another-host:{int(child.stdout)}")  # can't tell from here: wait for the lease


def test_running_attempt_that_loses_its_lease_stops_and_records_nothing(db_url, tmp_path: Path):
    """A real noop job under the local executor; the test takes its run for dead mid-way."""
    settings = Settings(db_url=db_url, artifact_root=str(tmp_path / "artifacts"), home=tmp_path, lease_s=1.0)
    db = store.open_database(db_url)
    spec = parse_spec({"kind": "noop", "sleep_s": 6, "retries": 1, "payload": "lease"})
    run = record_submission(db, spec, code={}, executor="local").run
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(execute_run(run.id, settings)))
    thread.start()
    deadline = time.monotonic() + 30
    while store.get_run(db, run.id).status != RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # a few heartbeats: the lease stays ahead of the clock while the worker lives
    assert store.expired_runs(db) == []
    store.recover_expired(db, after_s=30)  # as if its node had stopped answering
    thread.join(timeout=30)
    assert result == [QUEUED]  # it stopped at its next progress update, long before its 6 s of work
    after = store.get_run(db, run.id)
    assert after.status == QUEUED and after.attempt == 1
    assert store.run_outputs(db, run.id) == [] and store.get_metrics(db, run.id) == []
    assert execute_run(run.id, settings) == SUCCEEDED  # the retry (attempt 2) runs and records normally
    assert store.get_run(db, run.id).attempt == 2 and len(store.run_outputs(db, run.id)) == 1


def test_sqlite_is_refused_on_a_cluster_of_several_machines(db, db_url):
    check_store_fits_cluster(db, {"node-a"})
    if db.is_sqlite:
        with pytest.raises(UsageError, match="BITSMITH_DB_URL: .*SQLite.*spans 2 machines.*PostgreSQL"):
            check_store_fits_cluster(db, {"node-a", "node-b"})
    else:
        check_store_fits_cluster(db, {"node-a", "node-b"})


def test_lease_setting_is_validated(monkeypatch):
    monkeypatch.setenv("BITSMITH_LEASE_S", "12.5")
    assert default_lease_s() == 12.5
    for bad in ("0.2", "soon", "nan"):
        monkeypatch.setenv("BITSMITH_LEASE_S", bad)
        with pytest.raises(UsageError, match="BITSMITH_LEASE_S"):
            default_lease_s()
