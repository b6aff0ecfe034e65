"""Hostile and odd input through the real CLI: printed literally, refused with exit 2 and one line, never a
traceback, never executed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


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
        _printed_literally(cli("lineage", f"run:{run_id}", "--down").out, name)
        for fmt in ("dot", "mermaid"):
            assert "\x1b" not in cli("lineage", f"run:{run_id}", "--down", "--format", fmt).out
    digests = [cli("models", "import", _model_dir(tmp_path / str(i), **{"artifact.json": json.dumps({"note": name})}),
                   "--name", name).out.strip() for i, name in enumerate(("[bold]x", "a\x1b[31mred"))]
    _printed_literally(cli("artifacts", "list").out, "[bold]x", "a\x1b[31mred", "note=[bold]x")
    for digest in digests:
        _printed_literally(cli("artifacts", "show", digest).out)
        _printed_literally(cli("lineage", digest).out)
    listed = {r["id"]: r["name"] for r in cli("runs", "list", "--json").json()}
    assert {listed[run_id] for run_id in ids.values()} == set(ODD_NAMES)  # --json stays exact
    res = cli("runs", "show", "zz\x1b[2Jzz", check=False)
    assert res.code == 2 and "\x1b" not in res.err and "\\x1b" in res.err


# -- bad input: exit 2, one line naming the file or field, never a traceback ------------------------------------
def _sweep(cli, *, constraint: str | None = None, parameters: dict | None = None, extra: str = "") -> Path:
    params = parameters or {"metrics": [0, 1, 2]}
    text = (f"kind: sweep\nbase: {{kind: noop, payload: s}}\nparameters: {json.dumps(params)}\n"
            + (f"constraints: [{json.dumps(constraint)}]\n" if constraint else "") + extra)
    return cli.write_spec("sweep.yaml", text)


@pytest.mark.parametrize("constraint", [
    "1 / metrics > 0",                  # division by zero
    "metrics % 0 == 1",                 # modulo by zero
    "'a' + metrics == 1",               # type error
    "metrics < 'a'",                    # unorderable
    "'x' * 99999999999 == 'y'",         # a huge string
    "[0] * 99999999999 == [1]",         # a huge list
    "9**9**9 > 1",                      # exponentiation is not allowed
    "-" * 100_000 + "metrics > 0",      # deep nesting
    "(" * 5_000 + "metrics" + ")" * 5_000 + " > 0",
    " + ".join(["metrics"] * 50_000) + " > 0",
])
def test_sweep_constraint_errors_are_refused(cli, constraint: str) -> None:
    err = _refused(cli("sweep", "run", _sweep(cli, constraint=constraint), "--executor", "local", check=False),
                   "constraints")
    assert len(err) < 2_000
    assert cli("runs", "list", "--json").json() == []


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


def test_symlink_in_imported_folder_is_refused(cli, tmp_path) -> None:
    model = _model_dir(tmp_path / "m")
    (model / "link.txt").symlink_to("/etc/hostname")
    _refused(cli("models", "import", model, check=False), "link.txt")


def test_fifo_in_imported_folder_is_refused(cli, tmp_path) -> None:
    model = _model_dir(tmp_path / "m")
    os.mkfifo(model / "pipe")
    _refused(cli("models", "import", model, check=False, timeout=60), "pipe")
