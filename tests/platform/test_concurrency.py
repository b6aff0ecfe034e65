"""Concurrent writers: many processes on one embedded SQLite store lose nothing; racing claims have one winner."""
from __future__ import annotations

import hashlib
import multiprocessing
import threading

from sqlalchemy import func, select

from bitsmith.platform.store import (IllegalTransition, add_run_outputs, create_run, get_run, lineage, list_runs,
                                     log_metrics, open_database, register_artifact, run_events, transition)
from bitsmith.platform.store.records import QUEUED, RUNNING, SUCCEEDED
from bitsmith.platform.store.schema import artifacts_t, metrics_t, run_events_t, run_inputs_t, run_outputs_t, runs_t

PROCESSES, RUNS, METRICS = 8, 25, 20


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _worker(url: str, worker: int) -> list[str]:
    db = open_database(url)  # every process migrates-or-waits on the same fresh file
    shared = register_artifact(db, digest=_digest("shared-dataset"), kind="dataset", name="corpus", uri="mem://d",
                               size_bytes=1, is_dir=False, metadata={}, producer_run_id=None)
    ids = []
    for i in range(RUNS):
        source = register_artifact(db, digest=_digest(f"in-{worker}-{i}"), kind="model", name=f"in-{worker}",
                                   uri="mem://i", size_bytes=2, is_dir=False, metadata={"i": i}, producer_run_id=None)
        run = create_run(db, kind="quantize", name=None, spec={"i": i}, spec_hash="h", cache_key=f"{worker}-{i}",
                         seed=i, code_version={}, tags=(f"w{worker}",), executor="local", max_retries=0,
                         inputs={"model": source.digest, "calibration": shared.digest})
        transition(db, run.id, RUNNING, pid=worker)
        log_metrics(db, run.id, [(f"m{k}", i, float(k)) for k in range(METRICS)])
        out = register_artifact(db, digest=_digest(f"out-{worker}-{i}"), kind="quantized-model", name=None,
                                uri="mem://o", size_bytes=3, is_dir=False, metadata={}, producer_run_id=run.id)
        add_run_outputs(db, run.id, {"qmodel": out.digest})
        transition(db, run.id, SUCCEEDED)
        ids.append(run.id)
    return ids


def test_eight_processes_writing_at_once_lose_nothing(sqlite_url):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        results = pool.starmap(_worker, [(sqlite_url, w) for w in range(PROCESSES)])
    ids = [run_id for batch in results for run_id in batch]
    total = PROCESSES * RUNS
    assert len(set(ids)) == total

    db = open_database(sqlite_url)
    with db.transaction() as conn:
        def count(table, *where):
            return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()
        assert count(runs_t) == total
        assert count(runs_t, runs_t.c.status == SUCCEEDED) == total
        assert count(metrics_t) == total * METRICS
        assert count(artifacts_t) == 2 * total + 1
        assert count(run_inputs_t) == 2 * total and count(run_outputs_t) == total
        assert count(run_events_t) == 3 * total
    assert {r.tags for r in list_runs(db, limit=None)} == {(f"w{w}",) for w in range(PROCESSES)}
    assert len(lineage(db, digest=_digest("shared-dataset"), direction="down").runs) == total


def test_racing_claims_of_one_run_have_exactly_one_winner(db):
    run = create_run(db, kind="eval", name=None, spec={}, spec_hash="h", cache_key="k", seed=0, code_version={},
                     tags=(), executor=None, max_retries=0, inputs={})
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def claim(worker: int) -> None:
        barrier.wait()
        try:
            transition(db, run.id, RUNNING, expected_from=QUEUED, host=f"worker-{worker}")
            outcomes.append(f"won:{worker}")
        except IllegalTransition:
            outcomes.append("lost")

    threads = [threading.Thread(target=claim, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("lost") == 5
    stored = get_run(db, run.id)
    assert stored.status == RUNNING and stored.host == f"worker-{winners[0].split(':')[1]}"
    assert [e.to_status for e in run_events(db, run.id)] == [QUEUED, RUNNING]
