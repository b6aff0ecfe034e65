"""`bitsmith export` through the real CLI: a cached, recorded job whose `export` artifact sits in lineage below the
quantized model and is found by its format; bad input exits 2 without a run."""
from __future__ import annotations

import importlib.util
import json

import pytest

HAS_GGUF = importlib.util.find_spec("gguf") is not None


@pytest.mark.skipif(not HAS_GGUF, reason="the gguf package is not installed (make extras)")
def test_export_is_a_cached_job_found_by_format_and_in_lineage(cli, trained_lm, tmp_path) -> None:
    cli("models", "import", trained_lm, "--name", "tiny-lm")
    q = cli.write_spec("q.yaml", """kind: quantize
name: tiny-q4
inputs: {model: tiny-lm}
method: {type: rtn}
bits: 4
group_size: 32
layout: gguf
""")
    quant = cli("submit", q, "--executor", "local", "--wait", "--json").json()
    assert quant["status"] == "succeeded"
    model_digest = quant["outputs"]["model"]

    first = cli("export", "tiny-q4", "--format", "gguf", "-o", tmp_path / "a.gguf", "--executor", "local",
                "--json").json()
    assert first["status"] == "succeeded" and not first["cache_hit"]
    assert (tmp_path / "a.gguf").read_bytes()[:4] == b"GGUF"
    meta = first["artifact"]["metadata"]
    assert meta["format"] == "gguf" and meta["exact_tensors"] == meta["quantized_tensors"] == 14
    assert 4.5 <= meta["quantized_bits_per_weight"] < meta["bits_per_weight"]  # 4 + 2*16/32, plus f32 leftovers

    again = cli("export", quant["run_id"][:10], "--format", "gguf", "-o", tmp_path / "b.gguf", "--executor", "local",
                "--json").json()
    assert again["cache_hit"] and again["outputs"] == first["outputs"], (again, first)
    assert (tmp_path / "b.gguf").read_bytes() == (tmp_path / "a.gguf").read_bytes()

    found = cli("artifacts", "find", "--kind", "export", "--where", "meta.format==gguf", "--json").json()
    assert [a["digest"] for a in found] == [first["outputs"]["export"]]
    assert cli("artifacts", "find", "--kind", "export", "--where", "meta.format==gptq", "--json").json() == []
    up = cli("lineage", first["outputs"]["export"][:12], "--format", "json").out
    assert model_digest in up

    ct = cli("export", f"{model_digest[:12]}", "--format", "compressed-tensors", "-o", tmp_path / "ct",
             "--executor", "local", "--json").json()
    assert ct["status"] == "succeeded" and (tmp_path / "ct" / "config.json").is_file()
    qcfg = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert qcfg["format"] == "pack-quantized"

    # bad input: an existing -o, an unquantized model, an unknown format, a ref naming nothing -> exit 2
    runs_before = cli("runs", "list", "--json").out
    for args, says in [
        (("tiny-q4", "--format", "gguf", "-o", tmp_path / "a.gguf"), "already exists"),
        (("tiny-lm", "--format", "gguf", "-o", tmp_path / "c.gguf"), "quantized-model"),
        (("tiny-q4", "--format", "onnx", "-o", tmp_path / "d"), "onnx"),
        (("no-such-thing", "--format", "gptq", "-o", tmp_path / "e"), "no-such-thing"),
    ]:
        res = cli("export", *args, "--executor", "local", check=False)
        assert res.code == 2 and says in res.err and "Traceback" not in res.err, (args, res.err)
    assert cli("runs", "list", "--json").out == runs_before
    assert not (tmp_path / "c.gguf").exists()
