"""Attempt fencing on real SQLite and PostgreSQL: a frozen attempt that resumes records nothing; cache hits are
written whole; leases follow the database's clock; orphaned queued runs are adopted; identical submissions join."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import event, select

from bitsmith.platform import store
from bitsmith.platform.config import Settings
from bitsmith.platform.scheduler.execute import execute_run
from bitsmith.platform.scheduler.submit import record_submission
from bitsmith.platform.specs import parse_spec
from bitsmith.platform.store.records import QUEUED, SUCCEEDED, TERMINAL_STATUSES
from bitsmith.platform.store.schema import artifacts_t, metrics_t

# A real executor process whose noop worker, right after it did its work, is frozen with SIGSTOP (heartbeat
# thread and all, as by a GC pause or a partition), then resumed after another attempt won the run. The lock
# only keeps the freeze from landing inside a heartbeat's transaction (which would hold the database lock).
FROZEN_EXECUTOR = textwrap.dedent('''
    import os, signal, sys, threading
    from pathlib import Path
    from bitsmith.platform import store
    from bitsmith.platform.config import Settings
    from bitsmith.platform.context import OutputArtifact, WorkerOutputs
    from bitsmith.platform.errors import JobCancelled
    from bitsmith.platform.scheduler.execute import execute_run
    import bitsmith.workers.noop as noop

    db_url, root, home, run_id = sys.argv[1:5]
    beating, real_renew, real_run = threading.Lock(), store.renew_lease, noop.run

    def renew_lease(*args, **kwargs):
        with beating:
            return real_renew(*args, **kwargs)

    def frozen_run(spec, ctx):
        real_run(spec, ctx)                          # its metrics wait in the context's buffer
        ctx.log_metrics({"stale/loss": 1.0}, step=0)
        with beating:
            os.kill(os.getpid(), signal.SIGSTOP)
        built = ctx.work_dir / "built"
        built.mkdir()
        (built / "levels").write_text("stale levels")
        ckpt = ctx.work_dir / "ckpt"
        ckpt.mkdir()
        (ckpt / "state").write_text("stale state")
        writes = {"checkpoint": lambda: ctx.checkpoint_sink(ckpt, 7, {}),
                  "derived_store": lambda: ctx.derived_store("stale-key", "levels", built),
                  "derived_lookup": lambda: ctx.derived_lookup("shared-key", "levels"),
                  "metrics": ctx.flush_metrics}
        for what, write in writes.items():
            try:
                write()
                print("WROTE", what, flush=True)
            except (store.IllegalTransition, JobCancelled):
                print("FENCED", what, flush=True)
        stale = ctx.output_path("stale.json")
        stale.write_text("stale result")
        return WorkerOutputs(artifacts={"result": OutputArtifact(stale, kind="result")}, metrics={"stale/final": 1.0})

    store.renew_lease, noop.run = renew_lease, frozen_run
    print("STATUS", execute_run(run_id, Settings(db_url=db_url, artifact_root=root, home=Path(home), lease_s=1.0)),
          flush=True)
''')


def settings_for(db_url: str, tmp_path: Path, lease_s: float = 1.0) -> Settings:
    return Settings(db_url=db_url, artifact_root=str(tmp_path / "artifacts"), home=tmp_path / "home", lease_s=lease_s)


def wait_for(predicate, what: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_frozen_attempt_that_resumes_after_losing_its_lease_records_nothing(db_url, tmp_path: Path):
    settings = settings_for(db_url, tmp_path)
    db = store.open_database(db_url)
    spec = parse_spec({"kind": "noop", "name": "frozen", "metrics": 3, "retries": 1, "payload": "real"})
    run = record_submission(db, spec, code={}, executor="local").run
    script = tmp_path / "frozen_executor.py"
    script.write_text(FROZEN_EXECUTOR)
    child = subprocess.Popen([sys.executable, str(script), db_url, settings.artifact_root, str(settings.home), run.id],
                             stdout=subprocess.PIPE, stderr=(tmp_path / "executor.err").open("w"), text=True)
    try:
        wait_for(lambda: process_state(child.pid) in "TZ", "the attempt to freeze")
        assert child.poll() is None, (tmp_path / "executor.err").read_text()
        wait_for(lambda: store.expired_runs(db, [run.id]), "its lease to run out")
        (recovery,) = store.recover_expired(db, [run.id])
        assert recovery.action == "requeued"
        assert execute_run(run.id, settings) == SUCCEEDED  # attempt 2 holds the run and completes it
        real = {e.role: e.digest for e in store.run_outputs(db, run.id)}
        store.register_artifact(db, digest="d" * 64, kind="levels", name=None, uri="file:///x/levels", size_bytes=1,
                                metadata={"derived_key": "shared-key"})
    finally:
        os.kill(child.pid, signal.SIGCONT)
    out, _ = child.communicate(timeout=60)
    assert sorted(line for line in out.splitlines() if line.startswith(("FENCED", "WROTE"))) == [
        "FENCED checkpoint", "FENCED derived_lookup", "FENCED derived_store", "FENCED metrics"], out
    after = store.get_run(db, run.id)
    assert after.status == SUCCEEDED and after.attempt == 2 and f"STATUS {SUCCEEDED}" in out
    assert {e.role: e.digest for e in store.run_outputs(db, run.id)} == real and list(real) == ["result"]
    assert [e.role for e in store.run_inputs(db, run.id)] == []
    with db.transaction() as conn:
        logged = conn.execute(select(metrics_t.c.attempt, metrics_t.c.key).where(metrics_t.c.run_id == run.id)).all()
        names = conn.execute(select(artifacts_t.c.name).where(artifacts_t.c.producer_run_id == run.id)).scalars().all()
    assert {attempt for attempt, _ in logged} == {2}
    assert {key for _, key in logged} == {"noop/value", "noop/metrics_logged"}
    assert names and set(names) == {None}  # `frozen/result` is bound through the run's outputs, not a row name
    assert store.resolve_artifact_ref(db, "frozen/result").digest == real["result"]
    assert store.final_metrics(db, [run.id])[run.id] == {"noop/value": 2.0, "noop/metrics_logged": 3.0}


def test_a_retried_run_shows_the_curve_of_its_latest_attempt_only(db):
    run = store.create_run(db, kind="noop", name=None, spec={"kind": "noop"}, spec_hash="h" * 64, cache_key="k",
                           seed=0, code_version={}, max_retries=1)
    for attempt, values in ((1, [5.0, 4.0, 3.0]), (2, [9.0, 8.0])):
        claimed = store.get_run(db, run.id)
        if attempt == 2:
            claimed = store.transition(db, run.id, QUEUED, expected_attempt=1)
        store.transition(db, run.id, "running", expected_from={QUEUED}, expected_attempt=claimed.attempt,
                         attempt=attempt, **store.lease_values("host:1", 30))
        store.log_attempt_metrics(db, run.id, attempt=attempt, batch=[("loss", s, v) for s, v in enumerate(values)])
    curve = store.get_metrics(db, run.id, "loss")
    assert [(m.attempt, m.step, m.value) for m in curve] == [(2, 0, 9.0), (2, 1, 8.0)]
    assert store.final_metrics(db, [run.id])[run.id] == {"loss": 8.0}  # not attempt 1's step 2
    with pytest.raises(store.IllegalTransition, match="attempt 1 no longer holds it"):
        store.log_attempt_metrics(db, run.id, attempt=1, batch=[("loss", 3, 0.0)])


def test_a_cache_hit_interrupted_while_it_is_recorded_leaves_no_half_written_run(db_url, tmp_path: Path):
    settings = settings_for(db_url, tmp_path, lease_s=30.0)
    db = store.open_database(db_url)
    spec = parse_spec({"kind": "noop", "metrics": 2, "payload": "cached"})
    original = record_submission(db, spec, code={}, executor="local").run
    assert execute_run(original.id, settings) == SUCCEEDED

    def drop_connection_on_metrics(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO METRICS"):
            raise ConnectionError("connection lost while recording the cache hit's metrics")

    event.listen(db.engine, "before_cursor_execute", drop_connection_on_metrics)
    try:
        with pytest.raises(ConnectionError):
            record_submission(db, spec, code={}, executor="local")
    finally:
        event.remove(db.engine, "before_cursor_execute", drop_connection_on_metrics)
    assert [r.id for r in store.list_runs(db, cache_key=original.cache_key)] == [original.id]
    hit = record_submission(db, spec, code={}, executor="local")
    assert hit.cache_hit and hit.run.status == SUCCEEDED and hit.run.cache_hit_of == original.id
    assert store.run_outputs(db, hit.run.id) == [e.__class__(hit.run.id, e.digest, e.role, e.direction)
                                                 for e in store.run_outputs(db, original.id)]
    assert store.final_metrics(db, [hit.run.id])[hit.run.id] == store.final_metrics(db, [original.id])[original.id]


@pytest.mark.parametrize("skew_h", [3, -3])
def test_leases_follow_the_database_clock_not_a_skewed_machine_clock(db, monkeypatch, skew_h: int):
    """A node whose clock is hours off neither takes a live lease for expired nor stamps leases already expired."""
    from bitsmith.platform.store import ledger, runs, schema

    live = store.create_run(db, kind="noop", name=None, spec={"kind": "noop"}, spec_hash="h" * 64, cache_key="k",
                            seed=0, code_version={}, max_retries=1)
    store.transition(db, live.id, "running", expected_from={QUEUED}, expected_attempt=0, attempt=1,
                     **store.lease_values("host-a:1", 30))
    skewed = lambda: datetime.now(timezone.utc) + timedelta(hours=skew_h)  # noqa: E731
    for module in (ledger, runs, schema):
        monkeypatch.setattr(module, "utcnow", skewed, raising=False)
    short = store.create_run(db, kind="noop", name=None, spec={"kind": "noop"}, spec_hash="h" * 64, cache_key="k2",
                             seed=0, code_version={}, max_retries=1)
    store.transition(db, short.id, "running", expected_from={QUEUED}, expected_attempt=0, attempt=1,
                     **store.lease_values("host-b:2", 1))  # stamped by the skewed node
    assert store.renew_lease(db, live.id, attempt=1, owner="host-a:1", lease_s=30)
    assert store.expired_runs(db) == [] and store.recover_expired(db) == []  # seen from the skewed node
    monkeypatch.undo()
    assert store.expired_runs(db) == []  # seen from a node with a good clock
    time.sleep(1.2)
    assert [r.id for r in store.expired_runs(db)] == [short.id]  # its lease still runs out, 1 s later
    assert [r.run.id for r in store.recover_expired(db)] == [short.id]
    assert store.get_run(db, live.id).status == "running"


def bitsmith(home: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, on an isolated home (SQLite + local artifacts)."""
    full_env = {**os.environ, "BITSMITH_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", "BITSMITH_NO_PROGRESS": "1",
                "COLUMNS": "200", "BITSMITH_LEASE_S": "2", **env}
    for key in ("BITSMITH_DB_URL", "BITSMITH_ARTIFACT_ROOT"):
        full_env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "bitsmith.platform.cli.main", *args], env=full_env,
                          capture_output=True, text=True, timeout=300)
    assert not check or proc.returncode == 0, f"bitsmith {' '.join(args)}: {proc.returncode}\n{proc.stderr}"
    return proc


def runner_pids(run_id: str) -> list[int]:
    """PIDs of the detached runners whose command line names `run_id`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"bitsmith.platform.scheduler.runner" in cmdline and run_id.encode() in cmdline:
            pids.append(int(proc.name))
    return pids


def test_a_runner_killed_before_it_claims_its_run_leaves_an_orphan_that_recover_runs(tmp_path: Path):
    home = tmp_path / "home"
    spec = tmp_path / "orphan.yaml"
    spec.write_text("kind: noop\nname: orphan\npayload: orphan\n")
    submitted = bitsmith(home, "submit", str(spec), "--executor", "local", BITSMITH_TEST_RUNNER_DELAY_S="60")
    run_id = submitted.stdout.split()[-1]
    (runner,) = runner_pids(run_id)
    os.kill(runner, signal.SIGKILL)  # the detached runner dies before it claims its run
    wait_for(lambda: not runner_pids(run_id), "the runner to die", timeout_s=10)

    def orphan_reported():
        report = json.loads(bitsmith(home, "db", "check", "--json", check=False).stdout)
        return [p for p in report["problems"] if p["ref"] == run_id]

    (problem,) = wait_for(orphan_reported, "db check to report the orphan", timeout_s=20)
    assert problem["what"] == "run" and "still queued but its dispatcher" in problem["issue"]
    recovered = json.loads(bitsmith(home, "runs", "recover", "--executor", "local", "--wait", "--json").stdout)
    assert [(r["run_id"], r["action"], r["final_status"]) for r in recovered] == [(run_id, "adopted", SUCCEEDED)]
    shown = json.loads(bitsmith(home, "runs", "show", run_id, "--json").stdout)
    assert shown["run"]["status"] == SUCCEEDED and [o["role"] for o in shown["outputs"]] == ["result"]
    assert json.loads(bitsmith(home, "db", "check", "--json").stdout)["ok"]


def test_identical_submissions_at_once_run_one_worker_and_the_other_becomes_its_cache_hit(tmp_path: Path):
    home = tmp_path / "home"
    spec = tmp_path / "twice.yaml"
    spec.write_text("kind: noop\nname: twice\nsleep_s: 3\npayload: twice\n")
    bitsmith(home, "db", "upgrade")
    env = {**os.environ, "BITSMITH_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", "BITSMITH_NO_PROGRESS": "1"}
    env.pop("BITSMITH_DB_URL", None)
    submits = [subprocess.Popen([sys.executable, "-m", "bitsmith.platform.cli.main", "submit", str(spec), "--executor",
                                 "local", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    run_ids = [json.loads(p.communicate(timeout=120)[0])["run_id"] for p in submits]
    db = store.open_database(f"sqlite:///{home / 'bitsmith.db'}")

    def both_ended():
        runs = [store.get_run(db, run_id) for run_id in run_ids]
        return runs if all(r.status in TERMINAL_STATUSES for r in runs) else None

    runs = wait_for(both_ended, "both runs to end", timeout_s=60)
    original, joined = sorted(runs, key=lambda r: r.cache_hit_of is not None)
    assert original.status == joined.status == SUCCEEDED
    assert original.attempt == 1 and original.cache_hit_of is None  # the one noop worker that ran
    assert joined.attempt == 0 and joined.cache_hit_of == original.id and joined.joins == original.id
    assert [e.to_status for e in store.run_events(db, joined.id)] == [QUEUED, SUCCEEDED]  # never running
    assert store.run_outputs(db, joined.id) == [e.__class__(joined.id, e.digest, e.role, e.direction)
                                                for e in store.run_outputs(db, original.id)]
    rerun = json.loads(bitsmith(home, "submit", str(spec), "--executor", "local", "--wait", "--no-cache",
                                "--json").stdout)
    assert not rerun["cache_hit"] and store.get_run(db, rerun["run_id"]).attempt == 1  # --no-cache runs anyway


def test_identical_runs_created_at_once_have_one_original_that_the_others_join(db, db_url):
    spec = {"kind": "noop"}
    barrier = threading.Barrier(4)

    def submit() -> store.RunRecord:
        barrier.wait()
        return store.create_run(store.open_database(db_url), kind="noop", name=None, spec=spec, spec_hash="h" * 64,
                                cache_key="same", seed=0, code_version={}, join_inflight=True)

    with ThreadPoolExecutor(4) as pool:
        created = list(pool.map(lambda _: submit(), range(4)))
    (original,) = [r for r in created if r.joins is None]
    assert sorted(r.joins for r in created if r.joins) == [original.id] * 3


def test_sweep_children_that_differ_only_in_non_semantic_fields_run_once(tmp_path: Path):
    home = tmp_path / "home"
    sweep = tmp_path / "tags.yaml"
    sweep.write_text("kind: sweep\nname: tagged\nbase: {kind: noop, payload: tagged}\nstrategy: grid\n"
                     "parameters:\n  tags: [[a], [b]]\nobjectives: [{metric: noop/metrics_logged, goal: max}]\n")
    rows = json.loads(bitsmith(home, "sweep", "run", str(sweep), "--executor", "local", "--json").stdout)["rows"]
    db = store.open_database(f"sqlite:///{home / 'bitsmith.db'}")
    children = sorted((store.get_run(db, r["run_id"]) for r in rows), key=lambda r: r.created_at)
    assert [r.status for r in children] == [SUCCEEDED, SUCCEEDED] and children[0].cache_key == children[1].cache_key
    assert [(r.attempt, r.cache_hit_of) for r in children] == [(1, None), (0, children[0].id)]


def test_the_ray_driver_dispatches_a_joined_run_before_the_runs_that_wait_for_it(db, tmp_path: Path):
    """With one slot, a joiner dispatched first would hold it while waiting for a run that never gets one."""
    from collections import deque

    from bitsmith.platform.scheduler.ray_executor import _Dispatch

    def make(**kwargs) -> str:
        return store.create_run(db, kind="noop", name=None, spec={"kind": "noop"}, spec_hash="h" * 64,
                                cache_key="same", seed=0, code_version={}, **kwargs).id

    original = make()
    joiner = make(join_inflight=True)
    assert store.get_run(db, joiner).joins == original
    dispatched: list[str] = []

    class Remote:  # stands in for ray.remote(execute_run): records what the driver dispatches, in order
        def options(self, **_: object) -> "Remote":
            return self

        def remote(self, run_id: str, settings: Settings) -> str:
            dispatched.append(run_id)
            return f"ref-{run_id}"

    batch = _Dispatch(db=db, settings=settings_for(db.url, tmp_path), remote=Remote(),
                      waiting=deque([joiner, original]), max_in_flight=1, on_finish=None)
    batch.fill()
    assert dispatched == [original] and list(batch.waiting) == [joiner]


def test_a_joiner_runs_itself_when_the_joined_run_fails_and_stops_when_cancelled(db_url, tmp_path: Path):
    settings = settings_for(db_url, tmp_path, lease_s=30.0)
    db = store.open_database(db_url)
    spec = parse_spec({"kind": "noop", "payload": "joined"})
    original = record_submission(db, spec, code={}, executor="local").run
    first, second = (record_submission(db, spec, code={}, executor="local").run for _ in range(2))
    assert first.joins == second.joins == original.id
    result: list[str] = []
    waiting = threading.Thread(target=lambda: result.append(execute_run(second.id, settings)))
    waiting.start()
    time.sleep(1.0)
    store.request_cancel(db, second.id)
    waiting.join(timeout=30)
    assert result == ["cancelled"]
    store.transition(db, original.id, "failed", message="failed elsewhere", error="boom")
    assert execute_run(first.id, settings) == SUCCEEDED  # the joined run failed: it ran itself
    after = store.get_run(db, first.id)
    assert after.attempt == 1 and after.cache_hit_of is None and [e.role for e in store.run_outputs(db, first.id)] == [
        "result"]


def test_queued_runs_whose_dispatcher_is_gone_are_orphans_adopted_once(db):
    def queued() -> str:
        return store.create_run(db, kind="noop", name=None, spec={"kind": "noop"}, spec_hash="h" * 64, cache_key="k",
                                seed=0, code_version={}).id

    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout)
    held, dead_owner, lapsed = queued(), queued(), queued()  # held: this live process dispatches it
    store.hold_dispatch(db, [dead_owner], owner=store.lease_owner(pid=dead_pid), lease_s=3600)
    store.hold_dispatch(db, [lapsed], owner="another-host:1", lease_s=1)
    assert {r.id for r in store.orphaned_runs(db)} == {dead_owner}
    time.sleep(1.2)
    assert {r.id for r in store.orphaned_runs(db)} == {dead_owner, lapsed}
    with ThreadPoolExecutor(2) as pool:
        adopted = list(pool.map(lambda owner: store.adopt_orphans(db, owner=owner, lease_s=30),
                                ["adopter-a:1", "adopter-b:2"]))
    assert sorted(r.id for runs in adopted for r in runs) == sorted([dead_owner, lapsed])  # each adopted once
    assert store.orphaned_runs(db) == [] and store.get_run(db, held).lease_owner == store.lease_owner()


def test_a_joiner_whose_dispatcher_died_is_adopted_and_still_becomes_the_cache_hit(db_url, tmp_path: Path):
    settings = settings_for(db_url, tmp_path, lease_s=30.0)
    db = store.open_database(db_url)
    spec = parse_spec({"kind": "noop", "payload": "adopted joiner"})
    original = record_submission(db, spec, code={}, executor="local").run
    joiner = record_submission(db, spec, code={}, executor="local").run
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout)
    store.hold_dispatch(db, [joiner.id], owner=store.lease_owner(pid=dead_pid), lease_s=3600)  # its runner died
    assert [r.id for r in store.adopt_orphans(db, owner=store.lease_owner(), lease_s=30)] == [joiner.id]
    assert execute_run(original.id, settings) == SUCCEEDED
    assert execute_run(joiner.id, settings) == SUCCEEDED
    after = store.get_run(db, joiner.id)
    assert after.attempt == 0 and after.cache_hit_of == original.id
