"""Hostile and odd input through the real CLI: printed literally, refused with exit 2 and one line, never a
traceback, never executed."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


ODD_NAMES = ("[/x]", "[bold]x", "a\x1b[31mred")


def _submit(cli, spec, *extra, check=True):
    return cli("submit", spec, "--executor", "local", "--wait", "--json", *extra, check=check)


def _refused(res, *names: str) -> str:
    """Exit 2, no traceback, and the error names each of `names`; returns stderr."""
    assert res.code == 2, (res.code, res.out, res.err)
    assert "Traceback" not in res.out + res.err, res.err
    for name in names:
        assert name in res.err, (name, res.err)
    return res.err


def _odd_store(cli) -> dict[str, str]:
    """One noop run per odd name (its output artifact is named `NAME/result`); name -> run id."""
    spec = cli.write_spec("noop.yaml", "kind: noop\nmetrics: 1\npayload: odd\ntags: ['[red]tag']\n")
    return {name: _submit(cli, spec, "--set", f"seed={i}", "--set", f"name={json.dumps(name)}").json()["run_id"]
            for i, name in enumerate(ODD_NAMES)}


def _printed_literally(out: str, *names: str) -> None:
    assert "\x1b" not in out, out
    for name in names:
        assert name.replace("\x1b", "\\x1b") in out, (name, out)


def test_user_strings_are_printed_literally(cli, tmp_path) -> None:
    ids = _odd_store(cli)
    _printed_literally(cli("runs", "list").out, *ODD_NAMES)
    for name, run_id in ids.items():
        _printed_literally(cli("runs", "show", run_id).out, name, "[red]tag")
    _printed_literally(cli("lineage", f"run:{ids['[/x]']}", "--down").out, "[/x]")
    assert "\x1b" not in cli("lineage", f"run:{ids[ODD_NAMES[-1]]}", "--down", "--format", "mermaid").out
    model = _model_dir(tmp_path / "m", **{"artifact.json": json.dumps({"note": "[bold]x"})})
    digest = cli("models", "import", model, "--name", "a\x1b[31mred").out.strip()
    _printed_literally(cli("artifacts", "list").out, "a\x1b[31mred", "note=[bold]x")
    _printed_literally(cli("artifacts", "show", digest).out, "a\x1b[31mred", "[bold]x")
    _printed_literally(cli("lineage", digest).out, "a\x1b[31mred")
    listed = {r["id"]: r["name"] for r in cli("runs", "list", "--json").json()}
    assert {listed[run_id] for run_id in ids.values()} == set(ODD_NAMES)  # --json stays exact
    res = cli("runs", "show", "zz\x1b[2Jzz", check=False)
    assert res.code == 2 and "\x1b" not in res.err and "\\x1b" in res.err
    res = cli("ru\x1b[2Jns", "list", check=False)  # click's own errors quote the input too
    assert res.code == 2 and "\x1b" not in res.err and "\\x1b" in res.err


# -- bad input: exit 2, one line naming the file or field, never a traceback ------------------------------------
def _sweep(cli, *, constraint: str | None = None, parameters: dict | None = None, extra: str = "") -> Path:
    params = parameters or {"metrics": [0, 1, 2]}
    text = (f"kind: sweep\nbase: {{kind: noop, payload: s}}\nparameters: {json.dumps(params)}\n"
            + (f"constraints: [{json.dumps(constraint)}]\n" if constraint else "") + extra)
    return cli.write_spec("sweep.yaml", text)


CONSTRAINT_ERRORS = [
    "1 / metrics > 0",                  # division by zero
    "metrics % 0 == 1",                 # modulo by zero
    "'a' + metrics == 1",               # type error
    "metrics < 'a'",                    # unorderable
    "'x' * 99999999999 == 'y'",         # a huge string
    "[0] * 99999999999 == [1]",         # a huge list
    "'%0999999999d' % metrics != 'y'",  # a huge formatted string
    "9**9**9 > 1",                      # exponentiation is not allowed
    "-" * 100_000 + "metrics > 0",      # deep nesting
    "-" * 990 + "metrics > 0 and 1 / 0",
    "(" * 5_000 + "metrics" + ")" * 5_000 + " > 0",
    " + ".join(["metrics"] * 50_000) + " > 0",
]


@pytest.mark.parametrize("constraint", CONSTRAINT_ERRORS[::3])
def test_sweep_constraint_errors_are_refused(cli, constraint: str) -> None:
    err = _refused(cli("sweep", "run", _sweep(cli, constraint=constraint), "--executor", "local", check=False),
                   "constraints")
    assert len(err) < 2_000 and "no combination" not in err
    assert cli("runs", "list", "--json").json() == []


def test_every_constraint_error_is_a_spec_error() -> None:
    from bitsmith.platform.errors import SpecError
    from bitsmith.platform.sweeps import check_constraint

    for constraint in CONSTRAINT_ERRORS:
        with pytest.raises(SpecError, match="^constraints: ") as info:
            check_constraint(constraint, {"metrics": 0})
        assert len(str(info.value)) < 300


def test_sweep_grid_too_large_to_expand_is_refused(cli) -> None:
    params = {f"tags.{i}": list(range(10)) for i in range(12)}  # 10**12 combinations
    _refused(cli("sweep", "run", _sweep(cli, parameters=params), "--executor", "local", check=False, timeout=60),
             "parameters", "1000000000000")


def test_sweep_random_samples_too_many_is_refused(cli) -> None:
    path = _sweep(cli, extra="strategy: random\nsamples: 1000000000000\n")
    _refused(cli("sweep", "run", path, "--executor", "local", check=False, timeout=60), "samples")


BILLION_LAUGHS = "kind: noop\n" + "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)) + "payload: *a8\n"


def test_yaml_alias_bomb_is_refused(cli) -> None:
    path = cli.write_spec("bomb.yaml", BILLION_LAUGHS)
    err = _refused(cli("submit", path, "--executor", "local", check=False, timeout=60), str(path), "alias")
    assert "line" in err


def test_yaml_anchors_within_limits_still_work(cli) -> None:
    path = cli.write_spec("anchors.yaml", "kind: noop\npayload: &p hello\nname: *p\n")
    assert _submit(cli, path).json()["name"] == "hello"


@pytest.mark.parametrize("name,text", [
    ("dup.yaml", "kind: noop\nseed: 1\nseed: 2\n"),
    ("dup.json", '{"kind": "noop", "seed": 1, "seed": 2}'),
])
def test_duplicate_keys_in_spec_files_are_refused(cli, name: str, text: str) -> None:
    path = cli.write_spec(name, text)
    err = _refused(cli("submit", path, "--executor", "local", check=False), str(path), "seed", "duplicate")
    if name.endswith(".yaml"):
        assert "line 3" in err


def test_duplicate_keys_in_sweep_files_are_refused(cli) -> None:
    path = _sweep(cli, extra="max_concurrency: 1\nmax_concurrency: 2\n")
    _refused(cli("sweep", "run", path, "--executor", "local", check=False), str(path), "max_concurrency")


def test_db_upgrade_to_unknown_revision_is_refused(cli) -> None:
    cli("runs", "list")
    _refused(cli("db", "upgrade", "--revision", "nonsense", check=False), "--revision", "nonsense")
    _refused(cli("db", "upgrade", "--revision", "0001", check=False), "--revision", "0001")
    assert cli("db", "current", "--json").json()["up_to_date"]


def _model_dir(root: Path, **files: str | bytes) -> Path:
    """A tiny Hugging Face-shaped directory: config.json, a safetensors file and `files`."""
    from safetensors.torch import save_file
    import torch

    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    save_file({"w": torch.zeros(2)}, str(root / "model.safetensors"))
    for name, content in files.items():
        path = root / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return root


@pytest.mark.parametrize("name,content", [
    ("config.json", "{not json"),
    ("config.json", "[1, 2]"),
    ("artifact.json", "{not json"),
    ("artifact.json", '"a string"'),
])
def test_malformed_json_in_imported_folder_is_refused(cli, tmp_path, name: str, content: str) -> None:
    model = _model_dir(tmp_path / "m", **{name: content})
    _refused(cli("models", "import", model, check=False), name)
    assert cli("artifacts", "list", "--json").json() == []


def test_models_import_of_a_plain_file_is_refused(cli, tmp_path) -> None:
    (tmp_path / "weights.txt").write_text("not a model")
    _refused(cli("models", "import", tmp_path / "weights.txt", check=False), "weights.txt", "not a directory")


def test_symlink_in_imported_folder_is_refused(cli, tmp_path) -> None:
    model = _model_dir(tmp_path / "m")
    (model / "link.txt").symlink_to("/etc/hostname")
    _refused(cli("models", "import", model, check=False), "link.txt")


def test_fifo_in_imported_folder_is_refused(cli, tmp_path) -> None:
    model = _model_dir(tmp_path / "m")
    os.mkfifo(model / "pipe")
    _refused(cli("models", "import", model, check=False, timeout=60), "pipe")


# -- metadata and numbers: refused before anything is written -----------------------------------------------------
def _objects(cli) -> list[Path]:
    return [p for p in (cli.home / "artifacts").rglob("*") if p.is_file()] if (cli.home / "artifacts").exists() else []


UNSTORABLE_OVERRIDES = [
    ("timeout_s=nan", "timeout_s"),
    ("timeout_s=.inf", "timeout_s"),
    ("resources.cpus=.nan", "resources.cpus"),
    (f"seed={2**70}", "seed"),
    ("tags=[ok, \"a\\0b\"]", "tags[1]"),
]


@pytest.mark.parametrize("override,field", UNSTORABLE_OVERRIDES[1::2])
def test_unstorable_spec_values_are_refused(cli, override: str, field: str) -> None:
    spec = cli.write_spec("noop.yaml", "kind: noop\n")
    _refused(_submit(cli, spec, "--set", override, check=False), field)
    assert cli("runs", "list", "--json").json() == []


def test_every_unstorable_spec_value_is_a_spec_error() -> None:
    from bitsmith.platform.errors import SpecError
    from bitsmith.platform.specs import load_spec

    for override, field in UNSTORABLE_OVERRIDES:
        with pytest.raises(SpecError, match=f"spec: {re.escape(field)}: "):
            load_spec(base={"kind": "noop"}, overrides=[override])


def test_infinite_timeout_in_a_spec_file_is_refused(cli) -> None:
    spec = cli.write_spec("inf.yaml", "kind: noop\ntimeout_s: .inf\n")
    _refused(_submit(cli, spec, check=False), str(spec), "timeout_s")


UNSTORABLE_METADATA = [
    ('{"bits": NaN}', "NaN"),
    ('{"bits": -Infinity}', "Infinity"),
    (json.dumps({"bits": 2**70}), "metadata.bits"),
    (json.dumps({"note": "a\x00b"}), "metadata.note"),
    ('{"bits": 3, "bits": 4}', "duplicate key 'bits'"),
]


def test_unstorable_metadata_is_refused_before_bytes_are_stored(cli, tmp_path) -> None:
    ok = cli("models", "import", _model_dir(tmp_path / "ok", **{"artifact.json": '{"bits": 3}'}), "--name", "ok")
    objects = _objects(cli)
    for i, (meta, field) in enumerate(UNSTORABLE_METADATA):
        bad = _model_dir(tmp_path / f"bad{i}", **{"artifact.json": meta})
        _refused(cli("models", "import", bad, check=False), field)
        assert _objects(cli) == objects  # no byte of the refused import was stored
    found = cli("artifacts", "find", "--kind", "model", "--where", "meta.bits<=3", "--json").json()
    assert [a["digest"] for a in found] == [ok.out.strip()]


def test_nan_in_a_sweep_base_is_refused(cli) -> None:
    path = _sweep(cli, extra="").parent / "nan-sweep.yaml"
    path.write_text("kind: sweep\nbase: {kind: noop, timeout_s: .nan}\nparameters: {timeout_s: [1, 2]}\n")
    _refused(cli("sweep", "run", path, "--executor", "local", check=False), str(path), "base.timeout_s")


@pytest.mark.postgres
def test_unstorable_metadata_is_refused_on_postgres_before_bytes_are_stored(make_cli, pg_url, tmp_path) -> None:
    cli = make_cli(tmp_path / "home", {"BITSMITH_DB_URL": pg_url})
    cli("db", "upgrade")
    for i, meta in enumerate(('{"bits": NaN}', json.dumps({"bits": 2**70}), json.dumps({"note": "a\x00b"}))):
        _refused(cli("models", "import", _model_dir(tmp_path / str(i), **{"artifact.json": meta}), check=False))
    _refused(cli("models", "import", _model_dir(tmp_path / "long"), "--name", "n" * 300, check=False), "name")
    assert _objects(cli) == [] and cli("artifacts", "list", "--json").json() == []


def test_over_long_artifact_name_is_refused(cli, tmp_path) -> None:
    _refused(cli("models", "import", _model_dir(tmp_path / "m"), "--name", "n" * 300, check=False), "name", "255")
    assert _objects(cli) == []


# -- code from artifacts: never executed, never unpickled ---------------------------------------------------------
EVIL = "import pathlib, os\npathlib.Path(os.environ['EVIL_MARKER']).write_text('executed')\n"
AUTO_MAP = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}


@pytest.mark.parametrize("files,named", [
    ({"pytorch_model.bin": b"\x80\x04K\x00."}, "pytorch_model.bin"),  # a decoy safetensors beside a pickle
    ({"weights.pt": b"x"}, "weights.pt"),
    ({"extra/weights.pth": b"x"}, "weights.pth"),
    ({"state.pkl": b"x"}, "state.pkl"),
    ({"evil.py": EVIL}, "evil.py"),
])
def test_models_import_refuses_code_and_pickles(cli, tmp_path, files: dict, named: str) -> None:
    model = _model_dir(tmp_path / "m")
    for name, content in files.items():
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_bytes(content) if isinstance(content, bytes) else (model / name).write_text(content)
    _refused(cli("models", "import", model, check=False), named)
    assert cli("artifacts", "list", "--json").json() == []


@pytest.mark.parametrize("config", ["config.json", "tokenizer_config.json"])
def test_models_import_refuses_auto_map(cli, tmp_path, config: str) -> None:
    model = _model_dir(tmp_path / "m")
    data = json.loads((model / config).read_text()) if (model / config).exists() else {}
    (model / config).write_text(json.dumps({**data, "auto_map": AUTO_MAP}))
    _refused(cli("models", "import", model, check=False), config, "auto_map")


def _evil_model_dir(root: Path) -> Path:
    """A model directory whose config asks transformers to import `evil.py` (which writes a marker file)."""
    model = _model_dir(root, **{"evil.py": EVIL})
    (model / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": AUTO_MAP}))
    return model


@pytest.mark.parametrize("loader,refusal", [
    ("from bitsmith.workers.models import load_model_and_tokenizer as load; load(sys.argv[1])", "DataError"),
    ("from bitsmith.workers.models import SAFE_LOADING; from transformers import AutoModelForCausalLM as A; "
     "A.from_pretrained(sys.argv[1], local_files_only=True, **SAFE_LOADING)", "trust_remote_code"),
    ("from transformers import AutoConfig as A; A.from_pretrained(sys.argv[1], local_files_only=True, "
     "trust_remote_code=False)", "trust_remote_code"),
])
def test_worker_loaders_never_run_code_from_an_artifact(tmp_path, loader: str, refusal: str) -> None:
    model, marker = _evil_model_dir(tmp_path / "m"), tmp_path / "marker"
    proc = subprocess.run([sys.executable, "-c", f"import sys; {loader}", str(model)], input="y\n", cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "EVIL_MARKER": str(marker)})
    assert proc.returncode != 0 and not marker.exists(), proc.stderr
    assert refusal in proc.stderr and "ImportError" not in proc.stderr, proc.stderr


# -- an 80-column terminal ------------------------------------------------------------------------------------------
def test_lists_keep_names_readable_at_80_columns(cli) -> None:
    spec = cli.write_spec("noop.yaml", "kind: noop\nmetrics: 1\n")
    names = ["quantize-gptq-3bit-g128-calib-pydoc", "eval-gptq-3bit"]
    for i, name in enumerate(names):
        _submit(cli, spec, "--set", f"name={name}", "--set", f"seed={i}")
    _submit(cli, spec, "--set", "name=a-cache-hit", "--set", "seed=0")
    narrow = cli.__class__(cli.home, {"COLUMNS": "80"})
    out = narrow("runs", "list").out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    for name in names:
        assert name[:16] in out, out
    assert "succeeded" in out and "noop" in out
    cli("data", "arithmetic", "--n-train", "20", "--n-calibration", "5", "--n-test", "5", "--name",
        "arithmetic-small-task-v2")
    out = narrow("artifacts", "list").out
    assert max(len(line) for line in out.splitlines()) <= 80 and "arithmetic-small-task-v2" in out, out
