"""Sweeps across a real two-node Ray cluster (`ray start --head` + `ray start --address`) that loses a node
or its submitting process mid-sweep: every child ends succeeded or failed with a reason, and the store and
artifacts stay consistent (`bitsmith db check`), on SQLite and on PostgreSQL.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bitsmith.platform import store
from bitsmith.platform.artifacts import materialize
from bitsmith.platform.store.records import RUNNING, SUCCEEDED, TERMINAL_STATUSES

from raycluster import LocalRayCluster, RayNode, short_temp_dir  # tests/integration/raycluster.py

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
LEASE_S = "3"

SWEEP = """kind: sweep
name: faults
base: {{kind: noop, sleep_s: {sleep_s}, metrics: 3, retries: {retries}}}
strategy: grid
parameters:
  payload: {payloads}
max_concurrency: 2
objectives: [{{metric: noop/metrics_logged, goal: max}}]
"""


@pytest.fixture
def two_nodes(tmp_path) -> Iterator[tuple[LocalRayCluster, RayNode]]:
    """A head node and a second node, 1 CPU each; ended by PID afterwards."""
    cluster = LocalRayCluster(short_temp_dir())
    try:
        cluster.start_head(cpus=1)
        second = cluster.add_node("second", cpus=1)
        yield cluster, second
    finally:
        cluster.shutdown()
        for node in cluster.nodes:  # keep the node logs with the test's files, for a failure's post-mortem
            if node.log.exists():
                (tmp_path / node.log.name).write_bytes(node.log.read_bytes())


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, proc: subprocess.Popen | None = None) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the sweep process exited {proc.returncode} first")
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def start_sweep(cli: Any, spec_path: Path, address: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bitsmith.platform.cli.main", "--address", address, "sweep", "run",
                             str(spec_path), "--json"], cwd=ROOT, env=cli.env, stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True)


def sweep_children(db: Any) -> list[store.RunRecord]:
    return [r for r in store.list_runs(db, limit=None) if r.sweep_id]


def assert_consistent(cli: Any, db: Any, runs: list[store.RunRecord]) -> None:
    """Every child ended with a reason if it failed, within its retries, and recorded its own bytes once."""
    for run in runs:
        assert run.status in TERMINAL_STATUSES, f"{run.id} left {run.status}"
        assert run.status == SUCCEEDED or run.error, f"{run.id} {run.status} without a reason"
        assert 1 <= run.attempt <= run.max_retries + 1
        starts = [e.attempt for e in store.run_events(db, run.id) if e.to_status == RUNNING]
        assert starts == list(range(1, run.attempt + 1)), f"{run.id}: attempts {starts}"
        if run.status == SUCCEEDED:
            (edge,) = store.run_outputs(db, run.id)
            path = materialize(str(cli.home / "artifacts"), edge.digest, cli.home / "cache")  # digest verified
            assert json.loads(path.read_text())["payload"] == run.spec["payload"]
            assert store.final_metrics(db, [run.id])[run.id]["noop/metrics_logged"] == 3.0
    check = cli("db", "check", "--json").json()
    assert check["ok"], check["problems"]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sweep_across_two_nodes_survives_losing_one(backend, request, tmp_path, make_cli, two_nodes) -> None:
    cluster, second = two_nodes
    env = {"RAY_AUTH_MODE": "disabled", "BITSMITH_LEASE_S": LEASE_S}
    if backend == "postgres":
        env["BITSMITH_DB_URL"] = request.getfixturevalue("pg_url")
    cli = make_cli(tmp_path / "home", env)
    if backend == "postgres":
        cli("db", "upgrade")
    payloads = [f"p{i}" for i in range(8)]
    spec = cli.write_spec("faults.yaml", SWEEP.format(sleep_s=2.5, retries=1, payloads=json.dumps(payloads)))
    proc = start_sweep(cli, spec, cluster.address, tmp_path / "sweep.log")
    try:
        db = store.open_database(env.get("BITSMITH_DB_URL") or f"sqlite:///{cli.home / 'bitsmith.db'}")

        def running_on_second() -> store.RunRecord | None:
            pids = second.worker_pids()
            return next((r for r in sweep_children(db) if r.status == RUNNING and r.pid in pids), None)

        victim = wait_for("a child running on the second node", running_on_second, 120, proc)
        cluster.kill_raylet(second)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "sweep.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    rows = json.loads(out)["rows"]
    assert sorted(r["params"]["payload"] for r in rows) == payloads
    assert all(r["status"] == SUCCEEDED for r in rows), rows
    lost = store.get_run(db, victim.id)
    assert lost.attempt == 2  # retried once, on the surviving node
    reasons = [e.message or "" for e in store.run_events(db, victim.id)]
    assert any("worker process died on attempt 1" in m or "lease expired" in m for m in reasons), reasons
    children = sweep_children(db)
    assert len(children) == len(payloads)  # nothing recorded twice: one run per combination
    assert_consistent(cli, db, children)


def test_sweep_resumes_after_its_submitting_process_dies(tmp_path, make_cli, two_nodes) -> None:
    cluster, _ = two_nodes
    cli = make_cli(tmp_path / "home", {"RAY_AUTH_MODE": "disabled", "BITSMITH_LEASE_S": LEASE_S})
    payloads = [f"q{i}" for i in range(4)]
    spec = cli.write_spec("orphans.yaml", SWEEP.format(sleep_s=4, retries=0, payloads=json.dumps(payloads)))
    proc = start_sweep(cli, spec, cluster.address, tmp_path / "sweep.log")
    db = store.open_database(f"sqlite:///{cli.home / 'bitsmith.db'}")
    def two_running() -> list[str] | None:
        ids = [r.id for r in sweep_children(db) if r.status == RUNNING]
        return ids if len(ids) == 2 else None

    try:
        orphans = wait_for("two children running", two_running, 120, proc)
    finally:
        proc.send_signal(signal.SIGKILL)  # the submitter dies with two children running and two queued
        proc.wait(timeout=30)
    sweep_id = sweep_children(db)[0].sweep_id
    resumed = cli("--address", cluster.address, "sweep", "resume", sweep_id[:10], "--json", timeout=300)
    rows = resumed.json()["rows"]
    assert sorted(r["params"]["payload"] for r in rows) == payloads
    assert all(r["status"] == SUCCEEDED for r in rows), rows
    for run_id in orphans:  # Ray ends a dead owner's tasks: stopped (or, if killed outright, the lease ran out)
        orphan = store.get_run(db, run_id)
        assert orphan.status == "failed" and "retries used up (0)" in orphan.error, orphan.error
        assert "worker process was stopped on attempt 1" in orphan.error or "lease expired" in orphan.error
    children = sweep_children(db)
    assert len(children) == 6  # the two queued children ran as they were; the two orphans' combinations anew
    assert_consistent(cli, db, children)
