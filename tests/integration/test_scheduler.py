"""The store's dispatcher through the real CLI and real Ray: one Ray instance for many detached submissions,
admission by resources with the reason shown, priorities, cancel of queued runs, SIGKILL and restart (every run
ends exactly once), one dispatcher per store; SQLite and PostgreSQL."""
from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from bitsmith.platform import store
from bitsmith.platform.store.records import TERMINAL_STATUSES

pytestmark = pytest.mark.ray
LEASE_ENV = {"BITSMITH_LEASE_S": "2"}
# The dispatcher with its embedded Ray (GCS, raylet, agents, its workers) while 50 runs wait and run: measured a
# peak of 1.4 GiB summed RSS (shared pages counted once per process) on 2 cores; six detached runners, each with
# its own Ray, took ~4 GB for six jobs before the queue.
MEMORY_BOUND_BYTES = 2 * 2**30


def wait_for(predicate, what: str, timeout_s: float = 120.0, every_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def dispatcher_pid(home: Path) -> int | None:
    try:
        return int((home / "scheduler" / "dispatcher.pid").read_text())
    except (OSError, ValueError):
        return None


def kill_tree(pid: int | None) -> None:
    """SIGKILL a dispatcher and everything it started (its embedded Ray)."""
    if pid is None:
        return
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def _home_of(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get("BITSMITH_HOME")
    except (psutil.Error, OSError):
        return None


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


BOTH_STORES = pytest.mark.parametrize("qcli", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                                      indirect=True)


@pytest.fixture
def qcli(request, make_cli, tmp_path):
    """A CLI on a fresh store: SQLite, or (parametrized `postgres`) a fresh PostgreSQL database."""
    if getattr(request, "param", "sqlite") == "postgres":
        cli = make_cli(tmp_path / "home", {**LEASE_ENV, "BITSMITH_DB_URL": request.getfixturevalue("pg_url")})
        cli("db", "upgrade")
    else:
        cli = make_cli(tmp_path / "home", LEASE_ENV)
    started: list[int] = []
    cli.started = started
    yield cli
    for pid in {*started, dispatcher_pid(cli.home)}:
        kill_tree(pid)


def open_db(cli):
    return store.open_database(cli.env.get("BITSMITH_DB_URL") or f"sqlite:///{cli.home / 'bitsmith.db'}")


def submit(cli, spec: Path, *extra: str) -> str:
    return cli("submit", spec, *extra).out.split()[-1]


def all_ended(db, run_ids):
    runs = [store.get_run(db, r) for r in run_ids]
    return runs if all(r.status in TERMINAL_STATUSES for r in runs) else None


def terminal_events(db, run_id: str) -> list[str]:
    return [e.to_status for e in store.run_events(db, run_id) if e.to_status in TERMINAL_STATUSES]


@pytest.mark.slow  # ~2 min on 2 busy cores: 50 CLI processes
def test_fifty_detached_submissions_share_one_ray_instance_within_a_memory_bound(qcli) -> None:
    spec = qcli.write_spec("n.yaml", "kind: noop\nname: many\n")
    samples: list[tuple[int, int, int]] = []  # (gcs_server count, runner count, RSS bytes) of the dispatcher tree
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pid = dispatcher_pid(qcli.home)
            procs = tree(pid) if pid else []
            rss, gcs = 0, 0
            for proc in procs:
                try:
                    rss += proc.memory_info().rss
                    gcs += proc.name() == "gcs_server"
                except psutil.NoSuchProcess:
                    pass
            runners = sum(1 for p in psutil.process_iter(["cmdline"])
                          if "bitsmith.platform.scheduler.runner" in " ".join(p.info["cmdline"] or [])
                          and _home_of(p) == str(qcli.home))
            if procs:
                samples.append((gcs, runners, rss))
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(3) as pool:
        run_ids = list(pool.map(lambda i: submit(qcli, spec, "--set", f"payload=p{i}"), range(50)))
    db = open_db(qcli)
    runs = wait_for(lambda: all_ended(db, run_ids), "all 50 runs to end", timeout_s=300)
    done.set()
    sampler.join()
    assert [r.status for r in runs] == ["succeeded"] * 50
    assert len({r.pid for r in runs}) <= 4  # a few long-lived Ray workers ran them all, not one process per run
    status = qcli("scheduler", "status", "--json").json()
    assert status["alive"] and status["owner"].endswith(f":{dispatcher_pid(qcli.home)}")
    assert status["ended"] == 50 and status["in_flight"] == 0 and status["queued"] == 0
    live = [s for s in samples if s[0]]
    assert live and {s[0] for s in live} == {1}, samples  # exactly one gcs_server: one Ray instance
    assert {s[1] for s in samples} == {0}  # no detached runner per submission
    peak = max(s[2] for s in samples)
    print(f"peak RSS of the dispatcher and its Ray: {peak / 2**20:.0f} MiB over {len(samples)} samples")
    assert peak < MEMORY_BOUND_BYTES, f"{peak / 2**20:.0f} MiB"


@BOTH_STORES
def test_admission_by_resources_priorities_cancel_and_one_dispatcher_per_store(qcli) -> None:
    started = qcli("scheduler", "start", "--num-cpus", "2", "--json").json()
    assert started["alive"] and started["total"]["CPU"] == 2
    second = qcli("scheduler", "start", "--foreground", check=False, timeout=60)
    assert second.code == 2 and started["owner"] in second.err and "Traceback" not in second.err, second.err
    again = qcli("scheduler", "start", check=False, timeout=60)
    assert again.code == 2 and "already has a dispatcher" in again.err

    db = open_db(qcli)
    blocker = submit(qcli, qcli.write_spec("b.yaml", "kind: noop\nsleep_s: 60\nresources: {cpus: 2}\n"))
    wait_for(lambda: store.get_run(db, blocker).status == "running", "the blocker to run")
    two = "kind: noop\nresources: {cpus: 2}\npayload: %s\n"
    low = submit(qcli, qcli.write_spec("a.yaml", two % "a"))
    high = submit(qcli, qcli.write_spec("h.yaml", two % "h"), "--priority", "5")
    low2 = submit(qcli, qcli.write_spec("c.yaml", two % "c"))
    doomed = submit(qcli, qcli.write_spec("d.yaml", two % "d"))
    gpu = submit(qcli, qcli.write_spec("g.yaml", "kind: noop\nresources: {cpus: 0, gpus: 1}\n"))

    def waiting():
        rows = qcli("queue", "--json").json()
        return rows if rows and rows[0]["waiting_for"] == "needs 2 CPU, 0 free" else None

    rows = wait_for(waiting, "the queue to show what its runs wait for", timeout_s=20)
    assert [r["run_id"] for r in rows] == [high, low, low2, doomed, gpu]
    assert [r["position"] for r in rows] == [1, 2, 3, 4, 5] and rows[0]["priority"] == 5
    assert {r["waiting_for"] for r in rows[:4]} == {"needs 2 CPU, 0 free"}
    assert rows[4]["waiting_for"] == "needs 1 GPU, the cluster has none"
    assert "needs 2 CPU, 0 free" in qcli("queue").out

    qcli("runs", "cancel", doomed)  # queued: cancelled at once, never runs
    assert store.get_run(db, doomed).status == "cancelled"
    qcli("runs", "cancel", blocker)  # running: the dispatcher stops its task within seconds
    ran = wait_for(lambda: all_ended(db, [blocker, low, high, low2]), "the CPU runs to end", timeout_s=120)
    assert [r.status for r in ran] == ["cancelled", "succeeded", "succeeded", "succeeded"]
    order = sorted((store.get_run(db, r) for r in (low, high, low2)), key=lambda r: r.started_at)
    assert [r.id for r in order] == [high, low, low2]  # priority first, then age
    assert order[0].started_at >= store.get_run(db, blocker).finished_at  # admitted only once 2 CPUs were free
    assert [e.to_status for e in store.run_events(db, doomed)] == ["queued", "cancelled"]
    assert store.get_run(db, gpu).status == "queued"  # no GPU on this cluster: it waits (the cluster may grow)
    status = qcli("scheduler", "status").out
    assert "ray " in status and "total       2 CPU" in status
    qcli("runs", "cancel", gpu)
    qcli("scheduler", "stop")
    assert qcli("scheduler", "status", "--json").json()["alive"] is False


@BOTH_STORES
def test_dispatcher_killed_mid_queue_and_restarted_ends_every_run_exactly_once(qcli) -> None:
    spec = qcli.write_spec("s.yaml", "kind: noop\nsleep_s: 2\nretries: 2\n")
    qcli("scheduler", "start", "--num-cpus", "2")
    run_ids = [submit(qcli, spec, "--set", f"payload=k{i}") for i in range(6)]
    db = open_db(qcli)
    wait_for(lambda: any(store.get_run(db, r).status == "running" for r in run_ids), "a run to start")
    first = dispatcher_pid(qcli.home)
    in_flight = [r for r in run_ids if store.get_run(db, r).status == "running"]
    assert in_flight
    kill_tree(first)  # SIGKILL: the dispatcher, its embedded Ray and the workers running our jobs
    assert not tree(first)
    assert qcli("scheduler", "status", "--json").json()["alive"] is False
    assert all(store.get_run(db, r).status not in TERMINAL_STATUSES for r in in_flight)

    qcli("scheduler", "start", "--num-cpus", "2")
    assert dispatcher_pid(qcli.home) != first
    runs = wait_for(lambda: all_ended(db, run_ids), "every run to end after the restart", timeout_s=180)
    assert [r.status for r in runs] == ["succeeded"] * 6
    for run in runs:
        assert terminal_events(db, run.id) == ["succeeded"]  # ended exactly once
        assert [e.role for e in store.run_outputs(db, run.id)] == ["result"]
    for run_id in in_flight:  # the attempts killed with the dispatcher were recovered through their leases
        events = store.run_events(db, run_id)
        assert [e.to_status for e in events].count("running") == 2, [(e.to_status, e.message) for e in events]
        assert store.get_run(db, run_id).attempt == 2


def test_a_detached_sweep_runs_on_the_dispatcher_within_its_max_concurrency(qcli) -> None:
    sweep = qcli.write_spec("sw.yaml", "kind: sweep\nname: queued-sweep\n"
                                       "base: {kind: noop, sleep_s: 1.5, resources: {cpus: 0.5}}\nstrategy: grid\n"
                                       "parameters:\n  payload: [a, b, c]\nmax_concurrency: 1\n"
                                       "objectives: [{metric: noop/metrics_logged, goal: max}]\n")
    qcli("scheduler", "start", "--num-cpus", "2")
    begun = time.monotonic()
    sweep_id = qcli("sweep", "run", sweep, "--detach").out.split()[0]
    assert time.monotonic() - begun < 30  # it returns once the children are queued, not when they end
    db = open_db(qcli)
    record = wait_for(lambda: (r := store.get_sweep(db, sweep_id)).status != "running" and r, "the sweep to end")
    assert record.status == "succeeded" and len(record.run_ids) == 3  # recorded by the dispatcher
    children = sorted((store.get_run(db, r) for r in record.run_ids), key=lambda r: r.started_at)
    assert [c.status for c in children] == ["succeeded"] * 3
    for before, after in zip(children, children[1:]):  # max_concurrency 1 though 2 CPUs fit four at once
        assert after.started_at >= before.finished_at


def test_custom_resources_are_declared_admitted_on_and_shown(qcli) -> None:
    bad = qcli("scheduler", "start", "--resources", '{"accel": 1.5}', check=False, timeout=60)
    assert bad.code == 2 and "--resources.accel: expected a whole amount" in bad.err and "Traceback" not in bad.err
    wrong = qcli.write_spec("w.yaml", "kind: noop\nresources: {custom: {GPU: 1}}\n")
    refused = qcli("submit", wrong, check=False, timeout=60)
    assert refused.code == 2 and "resources.custom: 'GPU' is one of Ray's own resources" in refused.err
    assert "ask for it with resources.gpus" in refused.err and "Traceback" not in refused.err

    started = qcli("scheduler", "start", "--num-cpus", "2", "--resources", '{"accel": 1}', "--json").json()
    assert started["total"]["accel"] == 1 and started["total"]["CPU"] == 2
    accel = "kind: noop\nsleep_s: %s\nresources: {cpus: 0.5, custom: {accel: 1}}\n"
    first = submit(qcli, qcli.write_spec("a1.yaml", accel % 60))
    db = open_db(qcli)
    wait_for(lambda: store.get_run(db, first).status == "running", "the first accel run to run")
    second = submit(qcli, qcli.write_spec("a2.yaml", accel % 0))
    lacking = submit(qcli, qcli.write_spec("t.yaml", "kind: noop\npayload: t\n"
                                                     "resources: {cpus: 0, custom: {tpu: 2}}\n"))
    last: list = []

    def waiting():
        last[:] = [qcli("queue", "--json").json()]
        rows = {r["run_id"]: r for r in last[0]}
        return rows if rows.get(second, {}).get("waiting_for") == "needs 1 accel, 0 free" else None

    rows = wait_for(waiting, f"the second accel run to wait for the accelerator ({last})", timeout_s=20)
    assert rows[second]["resources"] == {"CPU": 0.5, "accel": 1.0}
    assert rows[lacking]["waiting_for"] == "needs 2 tpu, the cluster has none"
    status = qcli("scheduler", "status").out
    assert "total       2 CPU, " in status and "memory, 1 accel\n" in status, status
    assert "used        0.5 CPU, 1 accel\n" in status and "free        1.5 CPU, " in status, status
    assert "node:" not in status  # Ray's node markers are admitted on, not shown
    assert store.get_run(db, second).status == "queued"  # 1.5 CPUs free, but no accelerator
    qcli("runs", "cancel", first)  # frees the accelerator
    runs = wait_for(lambda: all_ended(db, [first, second]), "both accel runs to end", timeout_s=120)
    assert [r.status for r in runs] == ["cancelled", "succeeded"]
    assert runs[1].started_at >= runs[0].finished_at  # one accelerator: one after the other
    assert store.get_run(db, lacking).status == "queued"
    assert store.get_run(db, second).spec["resources"]["custom"] == {"accel": 1.0}
    qcli("runs", "cancel", lacking)
    qcli("scheduler", "stop")


@pytest.mark.slow  # a real `ray start` cluster and two dispatchers: ~1 min on 2 busy cores
def test_a_dispatcher_joined_to_a_cluster_and_killed_loses_its_running_attempts_to_retries(make_cli, tmp_path) -> None:
    """What happens to running runs when a dispatcher that joined a cluster (`--address`) is SIGKILLed: Ray ends
    the tasks of the dead driver (the cluster itself stays up), so the attempt in flight is not adopted: it is
    re-queued while `retries` last (else failed, with the reason) and the restarted dispatcher runs it again.
    Queued runs wait in the store meanwhile. The cluster's own custom resources (`head`) come from Ray."""
    from raycluster import LocalRayCluster, cluster_env, short_temp_dir

    cluster = LocalRayCluster(short_temp_dir())
    cli = None
    try:
        cluster.start_head(cpus=2)
        cli = make_cli(tmp_path / "home", {**LEASE_ENV, "BITSMITH_RAY_ADDRESS": cluster.address,
                                           "RAY_AUTH_MODE": cluster_env()["RAY_AUTH_MODE"]})
        started = cli("scheduler", "start", "--json").json()
        assert started["ray_address"] == cluster.address and started["embedded"] is False
        assert started["total"]["head"] == 1 and started["total"]["CPU"] == 2  # the cluster's, from Ray
        retried = submit(cli, cli.write_spec("r.yaml", "kind: noop\nsleep_s: 10\nretries: 1\n"
                                                       "resources: {cpus: 1, custom: {head: 1}}\n"))
        doomed = submit(cli, cli.write_spec("d.yaml", "kind: noop\nsleep_s: 10\npayload: d\n"))
        waiting = submit(cli, cli.write_spec("w.yaml", "kind: noop\npayload: w\nresources: {cpus: 0, "
                                                       "custom: {head: 1}}\n"))  # after `retried`: head is taken
        db = open_db(cli)
        running = wait_for(lambda: all(store.get_run(db, r).status == "running" for r in (retried, doomed))
                           and [store.get_run(db, r) for r in (retried, doomed)], "both runs to run")
        assert store.get_run(db, waiting).status == "queued"
        kill_tree(dispatcher_pid(cli.home))  # the dispatcher alone: the cluster and its raylet stay up
        wait_for(lambda: not any(psutil.pid_exists(r.pid) for r in running), "Ray to end the dead driver's tasks",
                 timeout_s=60)
        assert store.get_run(db, waiting).status == "queued"
        cli("scheduler", "start")
        runs = wait_for(lambda: all_ended(db, [retried, doomed, waiting]), "the runs to end", timeout_s=180)
        assert [r.status for r in runs] == ["succeeded", "failed", "succeeded"]
        assert runs[0].attempt == 2 and "re-queued for attempt 2 of 2" in " ".join(
            e.message or "" for e in store.run_events(db, retried))
        assert "retries used up (0)" in runs[1].error
        for run in runs:
            assert len(terminal_events(db, run.id)) == 1
        cli("scheduler", "stop")
    finally:
        if cli is not None:
            kill_tree(dispatcher_pid(cli.home))
        cluster.shutdown()
