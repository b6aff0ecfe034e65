"""Outputs a worker records through its context while running (`ctx.save_checkpoint`, `ctx.cached_artifact`)
are held by the executor to its kind's declaration like returned outputs: an undeclared role or another
artifact kind fails the run with an `OutputError` naming the role, before anything is registered or built."""
from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest

from bitsmith.platform import store
from bitsmith.platform.config import Settings
from bitsmith.platform.context import local_context
from bitsmith.platform.errors import OutputError
from bitsmith.platform.scheduler.execute import execute_run
from bitsmith.platform.scheduler.submit import record_submission
from bitsmith.platform.specs import JOB_KIND_TABLE, parse_spec
from bitsmith.platform.specs.job_kinds import CHECKPOINTS, Output
from bitsmith.platform.store.records import FAILED, SUCCEEDED

# A test-only worker: records what `payload` asks for (JSON list of ["checkpoint", STEP] or ["derived", KIND])
# through its context, then returns the `result` noop jobs declare. A derived build leaves a marker file.
RECORDING_WORKER = textwrap.dedent("""
    import json
    from pathlib import Path
    from bitsmith.platform.context import OutputArtifact, WorkerOutputs

    def build(out):
        (out / "levels.json").write_text("{}")
        (Path(out).parents[2] / "built").write_text("built")  # beside the attempt dirs: outlives a failed run

    def run(spec, ctx):
        for what, arg in json.loads(spec.payload):
            if what == "checkpoint":
                directory = ctx.output_path(f"ckpt-{arg}")
                directory.mkdir()
                (directory / "state.json").write_text(json.dumps({"step": arg}))
                ctx.save_checkpoint(directory, arg)
            else:
                ctx.cached_artifact(f"key-{arg}", arg, build)
        result = ctx.output_path("result.json")
        result.write_text("{}")
        return WorkerOutputs(artifacts={"result": OutputArtifact(result, kind="result")})
""")

DERIVED_ANY_LEVEL_DB = Output("derived/*", "level-db", required=False, via_context=True)


@pytest.fixture
def recording_noop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`noop` jobs run the worker above; the returned function sets which outputs noop jobs also declare."""
    (tmp_path / "recording_worker.py").write_text(RECORDING_WORKER)
    monkeypatch.syspath_prepend(str(tmp_path))
    original = JOB_KIND_TABLE["noop"]

    def declare(*extra: Output) -> None:
        monkeypatch.setitem(JOB_KIND_TABLE, "noop", dataclasses.replace(
            original, worker="recording_worker", outputs=(*original.outputs, *extra)))

    declare()
    return declare


def run_noop(tmp_path: Path, sqlite_url: str, actions: list) -> tuple[str, store.RunRecord]:
    settings = Settings(db_url=sqlite_url, artifact_root=str(tmp_path / "artifacts"), home=tmp_path / "home")
    db = store.open_database(sqlite_url)
    run = record_submission(db, parse_spec({"kind": "noop", "payload": json.dumps(actions)}), code={},
                            executor="local").run
    status = execute_run(run.id, settings)
    return status, store.get_run(db, run.id)


@pytest.mark.parametrize("actions, extra, error", [
    ([["checkpoint", 3]], (), "OutputError: noop worker: recorded output 'checkpoint/step-000000003' while running, "
     "which noop jobs do not declare; expected none (noop jobs record no outputs while running)"),
    ([["derived", "level-db"]], (CHECKPOINTS,), "OutputError: noop worker: recorded output 'derived/level-db' while "
     "running, which noop jobs do not declare; expected one of checkpoint/step-*"),
    ([["derived", "logits"]], (DERIVED_ANY_LEVEL_DB,), "OutputError: noop worker: output 'derived/logits' is a "
     "'logits' artifact; expected 'level-db' (what noop jobs declare for 'derived/logits')"),
])
def test_an_undeclared_recorded_output_fails_the_run_before_it_is_registered_or_built(
        recording_noop, sqlite_url: str, tmp_path: Path, actions: list, extra: tuple, error: str) -> None:
    recording_noop(*extra)
    status, run = run_noop(tmp_path, sqlite_url, actions)
    assert status == FAILED and run.status == FAILED
    assert run.error.startswith(error), run.error
    db = store.open_database(sqlite_url)
    assert store.run_outputs(db, run.id) == []
    assert [a.kind for a in store.list_artifacts(db)] == []  # nothing registered, not even unnamed
    assert not (tmp_path / "home" / "runs" / run.id / "built").exists()  # the derived artifact was never built


def test_declared_recorded_outputs_are_stored(recording_noop, sqlite_url: str, tmp_path: Path) -> None:
    recording_noop(CHECKPOINTS, DERIVED_ANY_LEVEL_DB)
    status, run = run_noop(tmp_path, sqlite_url, [["checkpoint", 3], ["derived", "level-db"]])
    assert status == SUCCEEDED, run.error
    outputs = {e.role for e in store.run_outputs(store.open_database(sqlite_url), run.id)}
    assert outputs == {"result", "checkpoint/step-000000003", "derived/level-db"}
    assert (tmp_path / "home" / "runs" / run.id / "built").exists()  # where the failing cases look for a build


def test_a_local_context_given_the_kind_checks_the_same(tmp_path: Path) -> None:
    ctx, recorder = local_context(tmp_path / "work", job_kind="quantize")
    with pytest.raises(OutputError, match="quantize worker: recorded output 'checkpoint/step-000000001' while "
                                          "running, which quantize jobs do not declare"):
        ctx.save_checkpoint(tmp_path, 1)
    assert recorder.checkpoints == []
    train, recorder = local_context(tmp_path / "train", job_kind="train")
    train.save_checkpoint(tmp_path, 1)
    assert [step for _, step, _ in recorder.checkpoints] == [1]
