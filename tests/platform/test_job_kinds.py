"""The one table of job kinds: every list of kinds derives from it, the executor holds workers to the outputs
their kind declares, `spec-schema` prints them, and pipelines check `RUN_NAME/ROLE` references on load."""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import get_args

import pytest

from bitsmith.platform import store
from bitsmith.platform.config import Settings
from bitsmith.platform.errors import SpecError
from bitsmith.platform.jobs import WORKER_MODULES
from bitsmith.platform.pipeline import load_pipeline
from bitsmith.platform.scheduler.execute import execute_run
from bitsmith.platform.scheduler.submit import record_submission
from bitsmith.platform.specs import JOB_KIND_TABLE, JOB_KINDS, JobSpec, parse_spec
from bitsmith.platform.store.records import FAILED, SUCCEEDED

ROOT = Path(__file__).resolve().parents[2]

# A test-only worker: returns the outputs `payload` (JSON role -> artifact kind) asks for.
MISBEHAVING_WORKER = textwrap.dedent("""
    import json
    from bitsmith.platform.context import OutputArtifact, WorkerOutputs

    def run(spec, ctx):
        artifacts = {}
        for role, kind in json.loads(spec.payload).items():
            path = ctx.output_path(role.replace("/", "_") + ".json")
            path.write_text(json.dumps({"role": role}))
            artifacts[role] = OutputArtifact(path, kind=kind)
        return WorkerOutputs(artifacts=artifacts)
""")


def bitsmith(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BITSMITH_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", "BITSMITH_NO_PROGRESS": "1"}
    env.pop("BITSMITH_DB_URL", None)
    env.pop("BITSMITH_ARTIFACT_ROOT", None)
    return subprocess.run([sys.executable, "-m", "bitsmith.platform.cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_table_is_the_only_list_of_kinds() -> None:
    kinds = tuple(JOB_KIND_TABLE)
    union_members = get_args(get_args(JobSpec)[0])
    assert JOB_KINDS == kinds
    assert tuple(c.model_fields["kind"].default for c in union_members) == kinds
    assert tuple(WORKER_MODULES) == kinds
    assert all(entry.kind == kind for kind, entry in JOB_KIND_TABLE.items())
    for entry in JOB_KIND_TABLE.values():
        worker = entry.worker.rsplit(".", 1)[-1]
        assert (ROOT / "workers" / f"{worker}.py").is_file(), entry.worker  # named, not imported


def literal_outputs(path: Path) -> set[tuple[str, str]]:
    """(role, artifact kind) of each `OutputArtifact(PATH, KIND)` in `path` stored under a literal role
    (`{"model": OutputArtifact(...)}` or `artifacts["export"] = OutputArtifact(...)`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Dict):
            pairs = zip(node.keys, node.values)
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
            pairs = [(node.targets[0].slice, node.value)]
        else:
            continue
        for key, value in pairs:
            if (isinstance(key, ast.Constant) and isinstance(value, ast.Call)
                    and getattr(value.func, "id", None) == "OutputArtifact"):
                kinds = [k.value for k in value.keywords if k.arg == "kind"] + value.args[1:2]
                found.add((key.value, kinds[0].value))
    return found


def test_workers_return_what_their_kind_declares() -> None:
    """A source-level guard beside the executor's check (which the integration tests exercise for the
    kinds they run): each worker module's literal outputs are declared, and it names every required one;
    helper modules (plots, evaluators) return outputs some kind declares."""
    modules = {entry.worker.rsplit(".", 1)[-1]: entry for entry in JOB_KIND_TABLE.values()}
    for path in sorted((ROOT / "workers").rglob("*.py")):
        outputs = literal_outputs(path)
        entries = [modules[path.stem]] if path.parent.name == "workers" and path.stem in modules else \
            list(JOB_KIND_TABLE.values())
        for role, kind in outputs:
            assert any((d := e.output_for(role)) and d.kind == kind and not d.via_context for e in entries), \
                (path.name, role, kind)
        if path.parent.name == "workers" and path.stem in modules:
            required = {o.role for o in modules[path.stem].outputs if o.required}
            assert required <= {role for role, _ in outputs}, (path.name, required)


def test_spec_schema_prints_each_kinds_declared_outputs(tmp_path: Path) -> None:
    for kind, entry in JOB_KIND_TABLE.items():
        res = bitsmith(tmp_path, "spec-schema", kind)
        assert res.returncode == 0, res.stderr
        schema = json.loads(res.stdout)
        assert schema["properties"]["kind"]["const"] == kind
        assert schema["x-outputs"] == [o.describe() for o in entry.outputs]
        for out in entry.outputs:
            assert out.role in res.stderr and out.kind in res.stderr
    res = bitsmith(tmp_path, "spec-schema", "nope")
    assert res.returncode == 2
    assert f"expected one of {', '.join(JOB_KIND_TABLE)}" in res.stderr and "Traceback" not in res.stderr


@pytest.fixture
def misbehaving_noop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`noop` jobs run the test-only worker above (the table entry is replaced for this test only)."""
    (tmp_path / "misbehaving_worker.py").write_text(MISBEHAVING_WORKER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(JOB_KIND_TABLE, "noop", dataclasses.replace(JOB_KIND_TABLE["noop"],
                                                                     worker="misbehaving_worker"))


@pytest.mark.parametrize("returned, status, error", [
    ({"result": "result"}, SUCCEEDED, None),
    ({"result": "result", "extra": "result"}, FAILED,
     "OutputError: noop worker: returned output 'extra', which noop jobs do not declare; expected one of result"),
    ({"result": "report"}, FAILED,
     "OutputError: noop worker: output 'result' is a 'report' artifact; expected 'result'"),
    ({}, FAILED, "OutputError: noop worker: returned no 'result' output; expected it"),
    ({"checkpoint/step-000000001": "checkpoint", "result": "result"}, FAILED,
     "OutputError: noop worker: returned output 'checkpoint/step-000000001', which noop jobs do not declare"),
])
def test_executor_holds_the_worker_to_its_declared_outputs(misbehaving_noop: None, sqlite_url: str,
                                                           tmp_path: Path, returned, status, error) -> None:
    settings = Settings(db_url=sqlite_url, artifact_root=str(tmp_path / "artifacts"), home=tmp_path / "home")
    db = store.open_database(sqlite_url)
    run = record_submission(db, parse_spec({"kind": "noop", "payload": json.dumps(returned)}), code={},
                            executor="local").run
    assert execute_run(run.id, settings) == status
    done = store.get_run(db, run.id)
    assert done.status == status
    if error is None:
        assert {e.role for e in store.run_outputs(db, run.id)} == {"result"}
    else:
        assert done.error.startswith(error), done.error
        assert store.run_outputs(db, run.id) == []


def write_pipeline(tmp_path: Path, ref: str) -> Path:
    (tmp_path / "first.yaml").write_text("kind: noop\nname: first\n")
    (tmp_path / "second.yaml").write_text(f"kind: noop\nname: second\ninputs: {{data: {ref}}}\n")
    path = tmp_path / "pipeline.yaml"
    path.write_text("stages:\n  - {name: one, jobs: [{spec: first.yaml}]}\n"
                    "  - {name: two, jobs: [{spec: second.yaml}]}\n")
    return path


@pytest.mark.parametrize("ref", ["first/result", "elsewhere/model", "run:0123abcd/model", "sha256:" + "a" * 64])
def test_pipeline_references_to_declared_or_outside_outputs_load(tmp_path: Path, ref: str) -> None:
    assert [s.name for s in load_pipeline(write_pipeline(tmp_path, ref))] == ["one", "two"]


def test_pipeline_reference_to_an_undeclared_role_is_refused_before_anything_runs(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, "first/model")
    with pytest.raises(SpecError) as err:
        load_pipeline(path)
    assert str(err.value) == (f"{tmp_path / 'second.yaml'}: inputs.data: 'first/model' names output 'model' of "
                              "pipeline step 'first', which noop jobs do not declare; expected one of result")
    home = tmp_path / "home"
    res = bitsmith(home, "demo", "--pipeline", str(path), "--executor", "local")
    assert res.returncode == 2, res.stderr
    assert "inputs.data: 'first/model' names output 'model'" in res.stderr and "Traceback" not in res.stderr
    listed = bitsmith(home, "runs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
