"""Real job kinds through the real CLI: quantize a trained model, evaluate it, reproduce bit for bit."""
from __future__ import annotations


def test_quantize_eval_find_and_reproduce(cli, trained_lm) -> None:
    cli("data", "builtin", "pydoc")
    cli("models", "import", trained_lm, "--name", "tiny-lm")
    q = cli.write_spec("q.yaml", """kind: quantize
name: tiny-gptq3
inputs: {model: tiny-lm, calibration: corpus-pydoc}
method: {type: gptq}
bits: 3
group_size: null
calibration: {sequences: 8, seq_len: 64}
""")
    quant = cli("submit", q, "--executor", "local", "--wait", "--json").json()
    assert quant["status"] == "succeeded" and 3.0 < quant["metrics"]["effective_bits_per_weight"] < 3.5
    found = cli("artifacts", "find", "--kind", "quantized-model", "--where", "meta.bits<=3", "--json").json()
    assert [a["digest"] for a in found] == [quant["outputs"]["model"]]
    assert cli("artifacts", "find", "--kind", "quantized-model", "--where", "meta.bits<3", "--json").json() == []

    e = cli.write_spec("e.yaml", """kind: eval
name: tiny-eval
inputs: {model: tiny-gptq3/model, data: corpus-pydoc}
tasks: [{type: token_ppl, split: test, seq_len: 64, max_chunks: 8}]
""")
    ev = cli("submit", e, "--executor", "local", "--wait", "--json").json()
    assert ev["status"] == "succeeded" and ev["metrics"]["test/token_ppl"] > 1
    assert "test/token_ppl=" in cli("runs", "list", "--kind", "eval").out

    report = cli("reproduce", quant["run_id"][:10], "--executor", "local", "--json").json()
    assert report["matches"], report  # the quantized model's bytes are identical on a rerun
    assert any(o["role"] == "model" and o["same"] for o in report["outputs"])
