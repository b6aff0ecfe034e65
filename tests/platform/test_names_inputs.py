"""Names and inputs (issue 13): what `RUN_NAME/ROLE` and plain names resolve to, sweeps pinning their inputs,
dataset split files inside their artifact, input kinds per role, and eval task files as artifacts.

Most tests drive the real `bitsmith` CLI in subprocesses against an isolated home (SQLite + local artifacts).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class CLI:
    """The real CLI in a subprocess; `(*args)` returns (exit code, stdout, stderr)."""

    def __init__(self, home: Path):
        self.home = home
        self.env = {**os.environ, "BITSMITH_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0",
                    "BITSMITH_NO_PROGRESS": "1", "COLUMNS": "200"}
        self.env.pop("BITSMITH_DB_URL", None)
        self.env.pop("BITSMITH_ARTIFACT_ROOT", None)

    def __call__(self, *args: str, check: bool = True) -> tuple[int, str, str]:
        proc = subprocess.run([sys.executable, "-m", "bitsmith.platform.cli.main", *map(str, args)], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"bitsmith {' '.join(map(str, args))} exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc.returncode, proc.stdout, proc.stderr

    def spec(self, name: str, data: dict) -> Path:
        path = self.home / "specs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        return path

    def submit(self, data: dict, *extra: str, check: bool = True) -> dict:
        code, out, err = self("submit", self.spec("s.json", data), "--executor", "local", "--wait", "--json",
                              *extra, check=check)
        return json.loads(out) if out.strip() else {"exit": code, "err": err}

    def resolve(self, ref: str) -> str:
        return json.loads(self("artifacts", "show", ref, "--json")[1])["artifact"]["digest"]


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path / "home")


def noop(name: str, payload: str, **kw) -> dict:
    return {"kind": "noop", "name": name, "payload": payload, **kw}


# -- item 1: RUN_NAME/ROLE and plain names -------------------------------------------------------------------
def test_run_name_role_is_the_newest_succeeded_runs_output(cli: CLI) -> None:
    a = cli.submit(noop("r", "A"))["outputs"]["result"]
    b = cli.submit(noop("r", "B"))["outputs"]["result"]
    assert cli.resolve("r/result") == b
    again = cli.submit(noop("r", "A"))  # a cache hit of the first run (its own run_outputs row points at A)
    assert again["outputs"]["result"] == a  # (or a rerun, if the code changed meanwhile: the same bytes A)
    assert cli.resolve("r/result") == a  # was B: the artifact row of A kept its first registration time
    failed = cli.submit(noop("r", "F", fail=True), check=False)
    assert failed["status"] == "failed" and cli.resolve("r/result") == a  # only succeeded runs count
    consumer = cli.submit({"kind": "noop", "payload": "c", "inputs": {"data": "r/result"}})
    assert consumer["status"] == "succeeded"
    _, out, _ = cli("runs", "show", consumer["run_id"], "--json")
    assert a in out and b not in out
    code, _, err = cli("artifacts", "show", "nobody/result", check=False)
    assert code == 2 and "no succeeded run named 'nobody'" in err


def test_cache_hit_under_a_new_name_resolves(cli: CLI) -> None:
    a = cli.submit(noop("first", "A"))["outputs"]["result"]
    hit = cli.submit(noop("second", "A"))
    assert hit["cache_hit"]
    assert cli.resolve("second/result") == a


def test_slash_names_are_reserved_for_run_outputs(cli: CLI, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("some text\n" * 20)
    code, _, err = cli("data", "import", text, "--kind", "text", "--name", "r/result", check=False)
    assert code == 2 and "--name" in err and "'/'" in err and "Traceback" not in err
    model = tmp_path / "m"
    model.mkdir()
    code, _, err = cli("models", "import", model, "--name", "r/model", check=False)
    assert code == 2 and "--name" in err and "'/'" in err and "Traceback" not in err
    assert json.loads(cli("artifacts", "list", "--json")[1]) == []  # nothing was registered


def test_plain_name_is_the_newest_registration(cli: CLI, tmp_path: Path) -> None:
    x, y = tmp_path / "x.txt", tmp_path / "y.txt"
    x.write_text("first corpus\n" * 30)
    y.write_text("second corpus\n" * 30)
    dx = cli("data", "import", x, "--kind", "text", "--name", "ds", "--json")[1]
    dy = cli("data", "import", y, "--kind", "text", "--name", "ds", "--json")[1]
    dx, dy = json.loads(dx)["digest"], json.loads(dy)["digest"]
    assert cli.resolve("ds") == dy
    cli("data", "import", x, "--kind", "text", "--name", "ds")  # the same bytes again, under the same name
    assert cli.resolve("ds") == dx
    cli("data", "import", x, "--kind", "text", "--name", "other")  # same bytes, a second name
    assert cli.resolve("other") == dx


def test_sweep_resume_uses_the_digests_resolved_at_creation(cli: CLI, tmp_path: Path) -> None:
    x, y = tmp_path / "x.txt", tmp_path / "y.txt"
    x.write_text("first corpus\n" * 30)
    y.write_text("second corpus\n" * 30)
    dx = json.loads(cli("data", "import", x, "--kind", "text", "--name", "ds", "--json")[1])["digest"]
    sweep = cli.spec("sweep.json", {"kind": "sweep", "name": "sw", "base": {"kind": "noop", "inputs": {"data": "ds"}},
                                    "parameters": {"fail": [False, True]}})
    code, out, err = cli("sweep", "run", sweep, "--executor", "local", "--json", check=False)
    sweep_id = err.split("sweep ", 1)[1].split(":", 1)[0]
    dy = json.loads(cli("data", "import", y, "--kind", "text", "--name", "ds", "--json")[1])["digest"]
    assert dy != dx and cli.resolve("ds") == dy
    cli("sweep", "resume", sweep_id, "--executor", "local", "--json", check=False)
    _, out, _ = cli("runs", "list", "--sweep", sweep_id, "--json")
    runs = json.loads(out)
    assert len(runs) == 3  # two children, then the failed one again: the succeeded one is not rerun
    for run in runs:
        _, shown, _ = cli("runs", "show", run["id"], "--json")
        assert dx in shown and dy not in shown


# -- item 2: every file a worker reads lies inside a verified artifact --------------------------------------
def _dataset(tmp_path: Path) -> Path:
    from bitsmith.workers.data.datasets import write_dataset

    return write_dataset(tmp_path / "ds", "text", {"train": [{"text": "a"}], "calibration": [{"text": "b"}],
                                                    "test": [{"text": "c"}, {"text": "d"}]}, source={"test": True})


def _point_test_split(dataset: Path, file: str, sha256: str | None = None) -> None:
    meta_file = dataset / "artifact.json"
    meta = json.loads(meta_file.read_text())
    meta["splits"]["test"]["file"] = file
    if sha256 is not None:
        meta["splits"]["test"]["sha256"] = sha256
    meta_file.write_text(json.dumps(meta))


@pytest.mark.parametrize("where", ["absolute", "dotdot", "link"])
def test_split_files_outside_the_dataset_are_refused(tmp_path: Path, where: str) -> None:
    from bitsmith.platform.digests import sha256_file
    from bitsmith.platform.errors import DataError
    from bitsmith.workers.data.datasets import read_split, read_texts

    dataset = _dataset(tmp_path)
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"text": "secret"}\n')
    file = {"absolute": str(outside), "dotdot": "../outside.jsonl", "link": "link.jsonl"}[where]
    if where == "link":
        (dataset / "link.jsonl").symlink_to(outside)
    _point_test_split(dataset, file, sha256_file(outside))  # even with the outside file's own hash
    with pytest.raises(DataError, match=r"splits\.test\.file .*outside the dataset artifact"):
        read_split(dataset, "test")
    with pytest.raises(DataError, match="outside the dataset artifact"):
        read_texts(dataset, "test")
    assert read_split(dataset, "train") == [{"text": "a"}]


def test_split_bytes_must_match_the_recorded_hash(tmp_path: Path) -> None:
    from bitsmith.platform.errors import DataError
    from bitsmith.workers.data.datasets import read_split

    dataset = _dataset(tmp_path)
    assert [r["text"] for r in read_split(dataset, "test")] == ["c", "d"]
    (dataset / "test.jsonl").write_text('{"text": "swapped"}\n')
    with pytest.raises(DataError, match=r"test\.jsonl.*bytes hash to .* artifact\.json records"):
        read_split(dataset, "test")
    _point_test_split(dataset, "calibration.jsonl", "0" * 64)
    with pytest.raises(DataError, match="bytes hash to"):
        read_split(dataset, "test")


def test_choice_split_files_are_verified_too(tmp_path: Path) -> None:
    from bitsmith.platform.context import InputArtifact
    from bitsmith.platform.errors import DataError
    from bitsmith.platform.specs.eval import ChoiceTask
    from bitsmith.workers.evaluators import EvalEnv
    from bitsmith.workers.evaluators.choice import choice_file_of

    dataset = _dataset(tmp_path)
    outside = tmp_path / "mc.jsonl"
    outside.write_text('{"question": "q", "choices": ["a", "b"], "label": 0}\n')
    _point_test_split(dataset, str(outside))
    env = EvalEnv(model=None, tokenizer=None, device=None, dtype=None, batch_size=1, seed=0, work_dir=tmp_path,
                  datasets=[InputArtifact(digest="0" * 64, kind="dataset", path=dataset)])
    with pytest.raises(DataError, match="outside the dataset artifact"):
        choice_file_of(ChoiceTask(), env)


def test_input_kinds_are_checked_per_role_at_submission(cli: CLI, trained_lm: Path) -> None:
    model = json.loads(cli("models", "import", trained_lm, "--name", "tiny", "--json")[1])["digest"]
    result = cli.submit(noop("r", "A"))["outputs"]["result"]
    for data, kind in ((model, "model"), ("r/result", "result")):
        code, _, err = cli("submit", cli.spec("e.json", {"kind": "eval", "inputs": {"model": "tiny", "data": data},
                                                          "tasks": [{"type": "token_ppl"}]}),
                           "--executor", "local", "--wait", check=False)
        assert code == 2 and "Traceback" not in err, err
        assert f"inputs.data: artifact {(model if kind == 'model' else result)[:12]} is a '{kind}' artifact; " \
               "expected 'dataset'" in err
    code, _, err = cli("submit", cli.spec("q.json", {"kind": "quantize", "inputs": {"model": "r/result"},
                                                      "method": {"type": "rtn"}, "bits": 4}),
                       "--executor", "local", check=False)
    assert code == 2 and "inputs.model: artifact" in err and "'result' artifact; expected 'model'" in err, err
    _, out, _ = cli("runs", "list", "--json")
    assert [r["kind"] for r in json.loads(out)] == ["noop"]  # nothing was recorded for the refused submissions


def test_choice_task_file_is_an_artifact_in_the_cache_key_and_lineage(cli: CLI, trained_lm: Path,
                                                                      tmp_path: Path) -> None:
    cli("models", "import", trained_lm, "--name", "tiny")
    mc = tmp_path / "mc.jsonl"
    lines = (ROOT / "tests" / "data" / "python_mc.jsonl").read_text().splitlines()
    mc.write_text("\n".join(lines[:4]) + "\n")
    spec = {"kind": "eval", "inputs": {"model": "tiny"}, "tasks": [{"type": "choice", "file": str(mc)}],
            "compute": {"threads": 1}}
    first = cli.submit(spec)
    assert first["status"] == "succeeded" and not first["cache_hit"]
    _, shown, _ = cli("runs", "show", first["run_id"], "--json")
    shown = json.loads(shown)
    from bitsmith.platform.digests import sha256_file

    digest = sha256_file(mc)
    assert json.dumps(shown).count(digest) >= 2  # in the resolved spec and as the task_file.0 input
    assert str(mc) not in json.dumps(shown["run"]["spec"] if "run" in shown else shown.get("spec", {}))
    _, lineage, _ = cli("lineage", f"run:{first['run_id']}", "--json")
    assert digest in lineage
    mc.write_text("\n".join(lines[4:8]) + "\n")  # the same path, other questions
    second = cli.submit(spec)
    assert not second["cache_hit"] and second["status"] == "succeeded"
    _, shown2, _ = cli("runs", "show", second["run_id"], "--json")
    assert sha256_file(mc) in shown2 and digest not in shown2
    code, _, err = cli("submit", cli.spec("m.json", {**spec, "tasks": [{"type": "choice", "file": str(tmp_path)}]}),
                       "--executor", "local", check=False)
    assert code == 2 and "tasks[0].file" in err and "directory" in err
    code, _, err = cli("submit", cli.spec("m.json", {**spec, "tasks": [{"type": "choice", "file": "gone.jsonl"}]}),
                       "--executor", "local", check=False)
    assert code == 2 and "tasks[0].file 'gone.jsonl': no such local file" in err


def test_worker_refuses_a_task_file_that_is_not_a_verified_input(tmp_path: Path) -> None:
    from bitsmith.platform.errors import SpecError
    from bitsmith.platform.specs.eval import ChoiceTask
    from bitsmith.workers.evaluators import EvalEnv
    from bitsmith.workers.evaluators.choice import choice_file_of

    mc = tmp_path / "mc.jsonl"
    mc.write_text('{"question": "q", "choices": ["a", "b"], "label": 0}\n')
    env = EvalEnv(model=None, tokenizer=None, device=None, dtype=None, batch_size=1, seed=0, work_dir=tmp_path,
                  datasets=[])
    with pytest.raises(SpecError, match="not a verified input of this run"):
        choice_file_of(ChoiceTask(file=str(mc)), env)


def test_names_on_both_databases(db) -> None:
    """The store itself (SQLite and PostgreSQL): registrations, RUN_NAME/ROLE, and '/' refused for imports."""
    import hashlib

    from bitsmith.platform.errors import NotFoundError, UsageError
    from bitsmith.platform.store import (add_run_outputs, create_run, create_sweep, get_sweep, register_artifact,
                                         resolve_artifact_ref, transition)
    from bitsmith.platform.store.records import FAILED, RUNNING, SUCCEEDED

    def artifact(text: str, name: str | None = None, producer: str | None = None) -> str:
        return register_artifact(db, digest=hashlib.sha256(text.encode()).hexdigest(), kind="result", name=name,
                                 uri=f"file:///a/{text}", size_bytes=1, producer_run_id=producer).digest

    def run(name: str, output: str, status: str) -> None:
        r = create_run(db, kind="noop", name=name, spec={}, spec_hash="h", cache_key=name + output, seed=0,
                       code_version={}, inputs={})
        transition(db, r.id, RUNNING, attempt=1)
        add_run_outputs(db, r.id, {"result": artifact(output, producer=r.id)})
        transition(db, r.id, status)

    a, b = artifact("A", "x"), artifact("B", "x")
    artifact("A", "x")
    assert resolve_artifact_ref(db, "x").digest == a  # the newest registration, not the row's first time
    run("r", "A", SUCCEEDED)
    run("r", "B", SUCCEEDED)
    run("r", "C", FAILED)
    assert resolve_artifact_ref(db, "r/result").digest == b
    run("r", "A", SUCCEEDED)
    assert resolve_artifact_ref(db, "r/result").digest == a
    with pytest.raises(NotFoundError, match="has no output 'model'"):
        resolve_artifact_ref(db, "r/model")
    with pytest.raises(UsageError, match="name 'r/result'.*'/'"):
        artifact("D", "r/result")
    sweep = create_sweep(db, name="s", spec={}, resolved_inputs={"x": a})
    assert get_sweep(db, sweep.id).resolved_inputs == {"x": a}


def test_sweep_pins_the_refs_of_every_child_and_of_optuna_choices() -> None:
    from bitsmith.platform.sweeps import load_sweep_spec, sweep_input_refs

    grid = load_sweep_spec({"kind": "sweep", "base": {"kind": "noop", "inputs": {"data": "a"}},
                            "parameters": {"inputs.data": ["b", "run-x/result"]}})
    assert sweep_input_refs(grid) == {"b", "run-x/result"}
    optuna = load_sweep_spec({"kind": "sweep", "base": {"kind": "noop"}, "strategy": "optuna",
                              "objectives": [{"metric": "m"}], "optuna": {"trials": 3},
                              "parameters": {"inputs.data": {"choices": ["c", "d"]}, "sleep_s": [0, 0.1]}})
    assert sweep_input_refs(optuna) == {"c", "d"}


def test_sweep_imports_a_local_task_file_once_and_pins_it(cli: CLI, trained_lm: Path, tmp_path: Path) -> None:
    from bitsmith.platform.digests import sha256_file

    cli("models", "import", trained_lm, "--name", "tiny")
    mc = tmp_path / "mc.jsonl"
    mc.write_text("\n".join((ROOT / "tests" / "data" / "python_mc.jsonl").read_text().splitlines()[:3]) + "\n")
    digest = sha256_file(mc)
    sweep = cli.spec("sweep.json", {"kind": "sweep", "base": {"kind": "eval", "inputs": {"model": "tiny"},
                                                               "compute": {"threads": 1},
                                                               "tasks": [{"type": "choice", "file": str(mc)}]},
                                    "parameters": {"batch_size": [4]}})
    _, out, _ = cli("sweep", "run", sweep, "--executor", "local", "--json")
    (row,) = json.loads(out)["rows"]
    assert row["status"] == "succeeded"
    _, shown, _ = cli("runs", "show", row["run_id"], "--json")
    inputs = {e["role"]: e["digest"] for e in json.loads(shown)["inputs"]}
    assert inputs["task_file.0"] == digest
