"""The metadata store on real SQLite and PostgreSQL databases: runs, artifacts, metrics, lineage, sweeps."""
from __future__ import annotations

import hashlib
import math
from datetime import timezone

import pytest

from bitsmith.platform.errors import NotFoundError, StoreError, UsageError
from bitsmith.platform.store import (IllegalTransition, add_run_outputs, artifact_consumers, create_run, create_sweep,
                                     final_metrics, find_artifacts, find_cached_run, get_artifact, get_metrics,
                                     get_run, get_sweep, lineage, list_artifacts, list_runs, log_metrics, new_id,
                                     register_artifact, request_cancel, resolve_artifact_ref, run_events, run_inputs,
                                     run_outputs, set_sweep_status, transition)
from bitsmith.platform.store.records import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_run(db, kind="quantize", *, cache_key="k0", inputs=None, tags=("exp",), **kw):
    return create_run(db, kind=kind, name=kw.pop("name", None), spec={"kind": kind, "bits": 4}, spec_hash="h" * 64,
                      cache_key=cache_key, seed=0, code_version={"package": "0.1.0"}, tags=tags, executor="local",
                      max_retries=1, inputs=inputs or {}, **kw)


def make_artifact(db, text: str, kind="model", name=None, metadata=None, producer=None, size=10):
    return register_artifact(db, digest=digest_of(text), kind=kind, name=name, uri=f"file:///a/{text}",
                             size_bytes=size, is_dir=False, metadata=metadata or {}, producer_run_id=producer)


def test_run_lifecycle_writes_events(db):
    run = make_run(db, name="first")
    assert run.status == QUEUED and run.attempt == 0 and run.tags == ("exp",)
    assert run.created_at.tzinfo is not None
    running = transition(db, run.id, RUNNING, host="box", pid=123, attempt=1, environment={"torch": "2.13"},
                         message="claimed")
    assert (running.status, running.host, running.pid, running.attempt) == (RUNNING, "box", 123, 1)
    assert running.environment == {"torch": "2.13"} and running.started_at is not None
    done = transition(db, run.id, SUCCEEDED, log_path="/logs/x.log")
    assert done.status == SUCCEEDED and done.finished_at >= done.started_at and done.log_path == "/logs/x.log"
    stored = get_run(db, run.id)
    assert stored == done and stored.started_at.tzinfo == timezone.utc
    events = run_events(db, run.id)
    assert [(e.from_status, e.to_status, e.attempt) for e in events] == [
        (None, QUEUED, 0), (QUEUED, RUNNING, 1), (RUNNING, SUCCEEDED, 1)]
    assert events[1].message == "claimed"


def test_illegal_transition_is_refused_and_changes_nothing(db):
    run = make_run(db)
    transition(db, run.id, RUNNING)
    transition(db, run.id, SUCCEEDED)
    with pytest.raises(IllegalTransition, match="cannot go from succeeded to running") as info:
        transition(db, run.id, RUNNING, host="other")
    assert isinstance(info.value, StoreError)
    assert get_run(db, run.id).host is None and len(run_events(db, run.id)) == 3
    queued = make_run(db)
    with pytest.raises(IllegalTransition, match="status is queued; expected running"):
        transition(db, queued.id, FAILED, expected_from=RUNNING)
    with pytest.raises(UsageError, match="unknown field"):
        transition(db, queued.id, RUNNING, colour="red")
    with pytest.raises(NotFoundError):
        transition(db, "ffffffffffff", RUNNING)


def test_get_run_by_prefix_and_ambiguity(db):
    a = make_run(db, run_id="abc123" + "0" * 20)
    make_run(db, run_id="abc456" + "0" * 20)
    assert get_run(db, "abc1").id == a.id
    assert get_run(db, a.id.upper()).id == a.id
    with pytest.raises(UsageError, match="matches 2 runs") as info:
        get_run(db, "abc")
    assert "abc123" in str(info.value) and "abc456" in str(info.value)
    with pytest.raises(NotFoundError, match="no run with that id"):
        get_run(db, "def")
    with pytest.raises(NotFoundError, match="not a run id"):
        get_run(db, "run-x")


def test_list_runs_filters_newest_first(db):
    sweep = create_sweep(db, name="grid", spec={"axes": {"bits": [3, 4]}})
    first = make_run(db, "quantize", tags=("a", "b"), sweep_id=sweep.id)
    second = make_run(db, "eval", tags=("b",))
    third = make_run(db, "quantize", tags=("ab",), sweep_id=sweep.id)
    transition(db, second.id, RUNNING)
    assert [r.id for r in list_runs(db)] == [third.id, second.id, first.id]
    assert [r.id for r in list_runs(db, kind="quantize")] == [third.id, first.id]
    assert [r.id for r in list_runs(db, status=RUNNING)] == [second.id]
    assert [r.id for r in list_runs(db, tag="b")] == [second.id, first.id]
    assert [r.id for r in list_runs(db, sweep_id=sweep.id, limit=1)] == [third.id]
    assert get_sweep(db, sweep.id[:8]).run_ids == (first.id, third.id)
    assert set_sweep_status(db, sweep.id, "running").status == "running"


def test_cache_lookup_takes_newest_success_that_is_not_a_hit(db):
    assert find_cached_run(db, "key") is None
    old = make_run(db, cache_key="key")
    transition(db, old.id, RUNNING)
    transition(db, old.id, SUCCEEDED)
    failed = make_run(db, cache_key="key")
    transition(db, failed.id, FAILED)
    assert find_cached_run(db, "key").id == old.id
    new = make_run(db, cache_key="key")
    transition(db, new.id, SUCCEEDED)
    hit = make_run(db, cache_key="key", cache_hit_of=new.id, status=SUCCEEDED)
    assert hit.cache_hit_of == new.id and hit.finished_at is not None
    assert find_cached_run(db, "key").id == new.id
    assert find_cached_run(db, "other") is None


def test_request_cancel(db):
    queued = make_run(db)
    assert request_cancel(db, queued.id[:20]).status == CANCELLED
    running = make_run(db)
    transition(db, running.id, RUNNING)
    flagged = request_cancel(db, running.id)
    assert flagged.status == RUNNING and flagged.cancel_requested
    assert transition(db, running.id, CANCELLED).status == CANCELLED
    with pytest.raises(UsageError, match="already cancelled"):
        request_cancel(db, running.id)


def test_artifact_registration_is_idempotent(db):
    first = make_artifact(db, "m", name="model-a", metadata={"bits": 4})
    again = make_artifact(db, "m", name="other-name", metadata={"bits": 8})
    assert again == first and again.metadata == {"bits": 4}
    assert get_artifact(db, first.digest[:8]) == first
    assert len(list_artifacts(db)) == 1
    with pytest.raises(UsageError, match="64 lowercase hex"):
        register_artifact(db, digest="xyz", kind="model", name=None, uri="u", size_bytes=1, is_dir=False,
                          metadata={}, producer_run_id=None)


def test_resolve_artifact_ref_each_form(db):
    old = make_artifact(db, "v1", name="llama")
    new = make_artifact(db, "v2", name="llama")
    run = make_run(db, inputs={"model": old.digest})
    add_run_outputs(db, run.id, {"qmodel": new.digest})
    assert resolve_artifact_ref(db, f"sha256:{old.digest}") == old
    assert resolve_artifact_ref(db, old.digest[:6]) == old
    assert resolve_artifact_ref(db, "llama") == new  # newest with the name
    assert resolve_artifact_ref(db, f"run:{run.id[:10]}/qmodel") == new
    with pytest.raises(NotFoundError, match="no artifact with that digest prefix or name; expected") as info:
        resolve_artifact_ref(db, "nothing-here")
    assert info.value.hint == "bitsmith artifacts list"
    with pytest.raises(NotFoundError, match="has no output 'model'; expected one of its outputs \\(qmodel\\)"):
        resolve_artifact_ref(db, f"run:{run.id}/model")
    with pytest.raises(UsageError, match="expected run:RUN_ID/ROLE"):
        resolve_artifact_ref(db, "run:abc")
    with pytest.raises(NotFoundError):
        resolve_artifact_ref(db, "sha256:" + "0" * 64)


def test_edges_and_consumers(db):
    data = make_artifact(db, "data", kind="dataset")
    run = make_run(db, inputs={"corpus": data.digest})
    model = make_artifact(db, "model", producer=run.id)
    add_run_outputs(db, run.id, {"model": model.digest})
    assert [(e.role, e.digest, e.direction) for e in run_inputs(db, run.id)] == [("corpus", data.digest, "input")]
    assert [(e.role, e.digest, e.direction) for e in run_outputs(db, run.id)] == [("model", model.digest, "output")]
    assert [e.run_id for e in artifact_consumers(db, data.digest)] == [run.id]
    retried = make_artifact(db, "model-from-attempt-2", producer=run.id)
    add_run_outputs(db, run.id, {"model": retried.digest, "log": data.digest})  # a retry re-records its outputs
    assert [(e.role, e.digest) for e in run_outputs(db, run.id)] == [("log", data.digest), ("model", retried.digest)]
    with pytest.raises(NotFoundError, match="unknown corpus="):
        make_run(db, inputs={"corpus": digest_of("never registered")})


def test_find_artifacts_compares_metadata_in_sql(db):
    a = make_artifact(db, "a", kind="quantized-model", metadata={"bits": 3, "quant": {"group": 64}, "method": "gptq"},
                      size=100)
    b = make_artifact(db, "b", kind="quantized-model", metadata={"bits": 4, "quant": {"group": 128}, "method": "rtn"},
                      size=200)
    c = make_artifact(db, "c", kind="quantized-model", metadata={"bits": "four", "sym": True}, size=300)
    make_artifact(db, "d", kind="dataset", metadata={"bits": 2}, size=5)

    def found(*where, kind="quantized-model"):
        return {x.digest for x in find_artifacts(db, kind=kind, where=list(where))}

    assert found("meta.bits <= 3") == {a.digest}  # "four" is a string: never numerically compared
    assert found("meta.bits>=3.5") == {b.digest}
    assert found("meta.bits == 4") == {b.digest}
    assert found("meta.bits != 4") == {a.digest}
    assert found("meta.quant.group < 100") == {a.digest}
    assert found("meta.method == gptq") == {a.digest}
    assert found("meta.bits == 'four'") == {c.digest}
    assert found("meta.sym == true") == {c.digest}
    assert found("size_bytes > 150", "meta.bits > 0") == {b.digest}
    assert found("name == x") == set()
    assert found("meta.bits < 5", kind=None) == {a.digest, b.digest, *found("meta.bits < 3", kind="dataset")}
    for bad in ("bits <= 3", "meta.bits ~ 3", "meta.bits <=", "size_bytes > big"):
        with pytest.raises(UsageError, match="expected|compares with a number") as info:
            find_artifacts(db, where=[bad])
        assert repr(bad) in str(info.value)


def test_metrics_batch_and_final_values(db):
    run, other, empty = make_run(db), make_run(db), make_run(db)
    assert log_metrics(db, run.id, [("loss", step, 1.0 / (step + 1)) for step in range(5)]) == 5
    log_metrics(db, run.id, [("ppl", None, 12.5), ("acc", 1, 0.5), ("acc", 2, 0.75), ("nan", 0, math.nan)])
    log_metrics(db, other.id, [("loss", 10, 0.1), ("loss", 2, 0.9)])
    rows = get_metrics(db, run.id)
    assert [(m.key, m.step) for m in rows][:3] == [("acc", 1), ("acc", 2), ("loss", 0)]
    assert [m.value for m in get_metrics(db, run.id, "loss")] == [1.0 / (s + 1) for s in range(5)]
    final = final_metrics(db, [run.id, other.id, empty.id])
    assert final[run.id]["loss"] == 1.0 / 5 and final[run.id]["ppl"] == 12.5 and final[run.id]["acc"] == 0.75
    assert math.isnan(final[run.id]["nan"])
    assert final[other.id] == {"loss": 0.1} and final[empty.id] == {}
    with pytest.raises(NotFoundError):
        log_metrics(db, "0" * 26, [("x", None, 1.0)])


def _chain(db):
    """dataset -> train run -> model -> quantize run -> qmodel -> eval run -> report."""
    dataset = make_artifact(db, "dataset", kind="dataset", name="corpus")
    train = make_run(db, "train", inputs={"corpus": dataset.digest})
    model = make_artifact(db, "model", producer=train.id)
    add_run_outputs(db, train.id, {"model": model.digest})
    quantize = make_run(db, "quantize", inputs={"model": model.digest, "calibration": dataset.digest})
    qmodel = make_artifact(db, "qmodel", kind="quantized-model", producer=quantize.id)
    add_run_outputs(db, quantize.id, {"qmodel": qmodel.digest})
    evaluate = make_run(db, "eval", inputs={"model": qmodel.digest})
    report = make_artifact(db, "report", kind="report", producer=evaluate.id)
    add_run_outputs(db, evaluate.id, {"report": report.digest})
    make_run(db, "eval", inputs={"model": model.digest})  # a side branch: not in qmodel's ancestry
    return dataset, train, model, quantize, qmodel, evaluate, report


def test_lineage_up_and_down(db):
    dataset, train, model, quantize, qmodel, evaluate, report = _chain(db)
    up = lineage(db, run_id=evaluate.id, direction="up")
    assert set(up.runs) == {evaluate.id, quantize.id, train.id}
    assert set(up.artifacts) == {qmodel.digest, model.digest, dataset.digest}
    assert (evaluate.id, qmodel.digest, "model", "input") in {(e.run_id, e.digest, e.role, e.direction)
                                                                for e in up.edges}
    assert len(up.edges) == 6  # eval<-qmodel<-quantize<-{model, dataset}; model<-train<-dataset
    assert isinstance(up.runs[train.id].created_at, type(train.created_at))

    down = lineage(db, digest=dataset.digest, direction="down")
    assert {train.id, quantize.id, evaluate.id} <= set(down.runs)
    assert {dataset.digest, model.digest, qmodel.digest, report.digest} == set(down.artifacts)
    assert down.root_kind == "artifact" and down.root_id == dataset.digest

    shallow = lineage(db, digest=report.digest, direction="up", max_depth=2)
    assert set(shallow.runs) == {evaluate.id} and set(shallow.artifacts) == {report.digest, qmodel.digest}
    with pytest.raises(NotFoundError):
        lineage(db, digest=digest_of("missing"))
    with pytest.raises(UsageError):
        lineage(db)


def test_sweep_lookup_errors(db):
    with pytest.raises(NotFoundError):
        get_sweep(db, new_id())
    with pytest.raises(UsageError):
        set_sweep_status(db, create_sweep(db, name=None, spec={}).id, "exploded")


def test_failed_run_can_be_requeued_and_retried(db):
    run = make_run(db)
    transition(db, run.id, RUNNING, attempt=1)
    failed = transition(db, run.id, FAILED, error="JobError: boom", traceback="Traceback ...")
    assert failed.finished_at is not None and failed.error == "JobError: boom"
    requeued = transition(db, run.id, QUEUED, message="resubmitted")
    assert requeued.finished_at is None and requeued.status == QUEUED
    retried = transition(db, run.id, RUNNING, attempt=2, error=None, traceback=None)
    assert (retried.attempt, retried.error) == (2, None)
    assert [e.attempt for e in run_events(db, run.id)] == [0, 1, 1, 1, 2]


def test_orm_session_commits_and_rolls_back(db):
    from bitsmith.platform.store.schema import Sweep

    sweep = create_sweep(db, name="s", spec={})
    with db.session() as session:
        session.get(Sweep, sweep.id).name = "renamed"
    with pytest.raises(RuntimeError):
        with db.session() as session:
            session.get(Sweep, sweep.id).name = "lost"
            raise RuntimeError("abort")
    assert get_sweep(db, sweep.id).name == "renamed"
