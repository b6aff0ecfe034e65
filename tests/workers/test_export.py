"""`export` jobs on a small Llama: compressed-tensors (mixed precision) and GGUF checked by real readers
(transformers, the compressed-tensors library, gguf's own dequantizer); the GPTQ layout by an independent reader
in test_export_gptq.py."""
from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch

from bitsmith.platform.context import local_context
from bitsmith.platform.errors import DataError, SpecError
from bitsmith.platform.specs import parse_spec
from bitsmith.platform.specs.export import EXPORT_FORMATS
from bitsmith.workers import export, quant_format, quantize

torch.set_num_threads(1)
HAS_CT = importlib.util.find_spec("compressed_tensors") is not None
HAS_GGUF = importlib.util.find_spec("gguf") is not None
MIXED = {r".*mlp\.down_proj": {"bits": 2}, r".*self_attn\.o_proj": {"bits": 3}}  # the rest 4-bit


@pytest.fixture(scope="module")
def tiny_llama(pydoc_corpus, tmp_path_factory) -> Path:
    """A random 2-block Llama (hidden 64, 4 heads, 2 KV heads, tied embeddings) with a byte-level BPE tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from bitsmith.workers.data.datasets import read_texts
    from bitsmith.workers.data.tokenizer import train_tokenizer

    tok = train_tokenizer(read_texts(pydoc_corpus, "train")[:300], vocab_size=400)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id))
    dest = tmp_path_factory.mktemp("llama") / "model"
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def quantized(model_dir: Path, work: Path, corpus: Path | None = None, **fields) -> Path:
    inputs = {"model": model_dir, **({"calibration": corpus} if corpus else {})}
    ctx, _ = local_context(work, inputs)
    spec = parse_spec({"kind": "quantize", "inputs": {k: k for k in inputs}, "method": {"type": "rtn"},
                       "compute": {"device": "cpu"}, "calibration": {"sequences": 16, "seq_len": 64}, **fields})
    return quantize.run(spec, ctx).artifacts["model"].path


def exported(qdir: Path, work: Path, fmt: str, **options):
    ctx, _ = local_context(work, {"model": qdir}, job_kind="export")
    spec = parse_spec({"kind": "export", "inputs": {"model": "m"}, "target": {"format": fmt, **options}})
    return export.run(spec, ctx).artifacts["export"]


def logits(model, ids=None) -> torch.Tensor:
    ids = torch.randint(0, 400, (2, 24), generator=torch.Generator().manual_seed(2)) if ids is None else ids
    with torch.no_grad():
        return model.eval()(ids).logits


def test_registry_keys_equal_spec_tags():
    assert export.WRITERS.names() == tuple(sorted(EXPORT_FORMATS))


# -- compressed-tensors ----------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_CT, reason="compressed-tensors is not installed")
def test_mixed_symmetric_2_3_4_bit_loads_in_transformers_with_equal_logits(tiny_llama, tmp_path):
    from compressed_tensors.quantization import QuantizationConfig
    from transformers import AutoModelForCausalLM

    qdir = quantized(tiny_llama, tmp_path / "q", bits=4, group_size=32, symmetric=True, overrides=MIXED)
    art = exported(qdir, tmp_path / "e", "compressed-tensors")
    cfg = json.loads((art.path / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(cfg)  # the library's own config model
    assert sorted(g.weights.num_bits for g in parsed.config_groups.values()) == [2, 3, 4]
    assert cfg["ignore"] == ["lm_head"]
    assert art.metadata["format"] == "compressed-tensors" and art.metadata["config_groups"] == 3
    theirs = AutoModelForCausalLM.from_pretrained(art.path, dtype=torch.float32)
    assert torch.equal(logits(theirs), logits(quant_format.load_quantized_model(qdir)))


def _decompress_with_compressed_tensors(export_dir: Path):
    """A dense model whose every quantized linear is decompressed by the compressed-tensors library itself,
    with the scheme of the config group whose targets match it (compressed-tensors' own matcher)."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.utils.match import match_name
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = json.loads((export_dir / "config.json").read_text())
    qcfg = QuantizationConfig.model_validate(raw.pop("quantization_config"))
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(raw.pop("model_type"), **raw), dtype=torch.float32)
    state = load_file(str(export_dir / "model.safetensors"))
    dense = {}
    for key in [k for k in state if k.endswith(".weight_packed")]:
        name = key[: -len(".weight_packed")]
        groups = [g for g in qcfg.config_groups.values() if any(match_name(name, t) for t in g.targets)]
        assert len(groups) == 1, name
        own = {k[len(name) + 1:]: state.pop(k) for k in list(state) if k.startswith(name + ".weight")}
        compressor = BaseCompressor.get_value_from_registry(groups[0].format)
        dense[name + ".weight"] = compressor.decompress(own, groups[0])["weight"].float()
    model.load_state_dict({**state, **dense}, strict=False)
    model.tie_weights()
    return model


@pytest.mark.skipif(not HAS_CT, reason="compressed-tensors is not installed")
def test_mixed_asymmetric_zero_points_decompress_exactly_with_the_library(tiny_llama, tmp_path):
    """Asymmetric mixed precision: transformers 5.24 cannot load it (its dequantize=True path decompresses every
    layer with the first config group's scheme; its default path refuses packed zero points), so the reader is
    the compressed-tensors library's own pack-quantized decompressor."""
    qdir = quantized(tiny_llama, tmp_path / "q", bits=4, group_size=32, symmetric=False, overrides=MIXED)
    art = exported(qdir, tmp_path / "e", "compressed-tensors")
    theirs = _decompress_with_compressed_tensors(art.path)
    assert torch.equal(logits(theirs), logits(quant_format.load_quantized_model(qdir)))


@pytest.mark.skipif(not HAS_CT, reason="compressed-tensors is not installed")
@pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")
def test_uniform_asymmetric_loads_in_transformers_with_dequantize(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    qdir = quantized(tiny_llama, tmp_path / "q", bits=3, group_size=32, symmetric=False)
    art = exported(qdir, tmp_path / "e", "compressed-tensors")
    theirs = AutoModelForCausalLM.from_pretrained(art.path, dtype=torch.float32,
                                                  quantization_config=CompressedTensorsConfig(dequantize=True))
    assert torch.equal(logits(theirs), logits(quant_format.load_quantized_model(qdir)))


# -- GGUF ------------------------------------------------------------------------------------------
def _gguf_model(path: Path):
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)


@pytest.mark.skipif(not HAS_GGUF, reason="the gguf package is not installed (make extras)")
@pytest.mark.parametrize("fields,qtype", [
    ({"bits": 4, "group_size": 32, "symmetric": True}, "Q4_0"),
    ({"bits": 4, "group_size": 64, "symmetric": True}, "Q4_0"),  # one scale for two blocks: still exact
    ({"bits": 4, "group_size": 32, "symmetric": False, "layout": "gguf"}, "Q4_1"),
    ({"bits": 8, "group_size": 32, "symmetric": True}, "Q8_0"),
])
def test_gguf_codes_map_exactly_and_transformers_logits_equal(tiny_llama, tmp_path, fields, qtype):
    qdir = quantized(tiny_llama, tmp_path / "q", **fields)
    art = exported(qdir, tmp_path / "e", "gguf")
    meta = art.metadata
    assert meta["tensor_types"] == {qtype: 14}
    assert meta["exact_tensors"] == 14 and all(t["from"] == "codes" for t in meta["tensors"])
    assert "note" not in meta
    assert torch.equal(logits(_gguf_model(art.path)), logits(quant_format.load_quantized_model(qdir)))


@pytest.mark.skipif(not HAS_GGUF, reason="the gguf package is not installed (make extras)")
def test_gguf_dequantized_weights_are_f32_and_load_with_equal_logits(tiny_llama, tmp_path):
    """`quantized_weights: dequantized` (the llama.cpp check's float reference): the same weights as F32 tensors."""
    qdir = quantized(tiny_llama, tmp_path / "q", bits=3, group_size=32, symmetric=False)
    art = exported(qdir, tmp_path / "e", "gguf", quantized_weights="dequantized")
    assert art.metadata["tensor_types"] == {"F32": 14} and art.metadata["exact_tensors"] == 14
    assert all(t["from"] == "dequantized" for t in art.metadata["tensors"]) and "note" not in art.metadata
    assert art.metadata["quantized_bits_per_weight"] == 32
    assert torch.equal(logits(_gguf_model(art.path)), logits(quant_format.load_quantized_model(qdir)))


@pytest.mark.skipif(not HAS_GGUF, reason="the gguf package is not installed (make extras)")
def test_gguf_q4_1_needs_the_gguf_layout_option(tiny_llama, tmp_path):
    """Without `layout: gguf` the Q4_1 minimum (-scale * zero) is rounded to fp16; with it, every block is exact."""
    plain = exported(quantized(tiny_llama, tmp_path / "q0", bits=4, group_size=32), tmp_path / "e0", "gguf")
    assert plain.metadata["exact_tensors"] < 14 and plain.metadata["max_abs_weight_diff"] > 0


@pytest.mark.skipif(not HAS_GGUF, reason="the gguf package is not installed (make extras)")
@pytest.mark.parametrize("symmetric,layout,qtype", [(True, "bitsmith", "Q4_0"), (False, "gguf", "Q4_1")])
def test_gguf_mixed_2_3_4_bit_codes_sit_exactly_in_4_bit_blocks(tiny_llama, tmp_path, symmetric, layout, qtype):
    qdir = quantized(tiny_llama, tmp_path / "q", bits=4, group_size=32, symmetric=symmetric, overrides=MIXED,
                     layout=layout)
    art = exported(qdir, tmp_path / "e", "gguf")
    by_module = {t["module"]: t for t in art.metadata["tensors"]}
    assert {by_module[f"model.layers.0.{m}"]["bits"] for m in ("mlp.down_proj", "self_attn.o_proj", "mlp.up_proj")} \
        == {2, 3, 4}
    assert all(t["type"] == qtype and t["from"] == "codes" and t["exact"] for t in by_module.values())
    import gguf

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(art.path)).tensors}
    assert types["blk.0.ffn_down.weight"] == qtype and types["token_embd.weight"] == "F32"
    assert torch.equal(logits(_gguf_model(art.path)), logits(quant_format.load_quantized_model(qdir)))


@pytest.mark.skipif(not HAS_GGUF, reason="the gguf package is not installed (make extras)")
def test_gguf_requantizes_what_no_block_type_holds_with_a_note(tiny_llama, tmp_path):
    qdir = quantized(tiny_llama, tmp_path / "q", bits=4, group_size=32, symmetric=False,
                     overrides={r".*mlp\.down_proj": {"bits": 8}})
    art = exported(qdir, tmp_path / "e", "gguf")
    by_module = {t["module"]: t for t in art.metadata["tensors"]}
    down = by_module["model.layers.0.mlp.down_proj"]
    assert down["type"] == "Q8_0" and down["from"] == "requantized" and 0 < down["max_abs_diff"]
    assert "2 of 14" in art.metadata["note"] and "requantized" in art.metadata["note"]
    diff = (logits(_gguf_model(art.path)) - logits(quant_format.load_quantized_model(qdir))).abs().max().item()
    assert 0 < diff < 0.5  # close, not equal: the requantized layers' reported weight error


@pytest.mark.skipif(not HAS_GGUF, reason="the gguf package is not installed (make extras)")
def test_gguf_tokenizer_round_trips(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    art = exported(quantized(tiny_llama, tmp_path / "q", bits=4, group_size=32, symmetric=True), tmp_path / "e",
                   "gguf")
    ours = AutoTokenizer.from_pretrained(tiny_llama)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = AutoTokenizer.from_pretrained(art.path.parent, gguf_file=art.path.name)
    text = "def f(x):\n    return x + 1  # über"
    assert theirs(text, add_special_tokens=False)["input_ids"] == ours(text, add_special_tokens=False)["input_ids"]


def test_gguf_names_the_pre_tokenizer_llama_cpp_splits_with():
    from bitsmith.workers.export_gguf import pre_tokenizer_name

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert pre_tokenizer_name(byte_level) == "gpt-2"
    assert pre_tokenizer_name({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, byte_level]}) == "smollm"  # single digits, then GPT-2
    assert pre_tokenizer_name({**byte_level, "use_regex": False}) == "default"
    assert pre_tokenizer_name({"type": "Metaspace"}) == "default" and pre_tokenizer_name(None) == "default"


# -- the quantize option and bad input -------------------------------------------------------------
def test_exact_min_scales_make_the_q4_1_minimum_an_fp16_value():
    from bitsmith.kernels.quantizers import quantize_rtn

    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(0)) * torch.logspace(-6, 1, 256)[:, None]
    for exact in (False, True):
        qw = quantize_rtn(w, bits=4, group_size=32, symmetric=False, exact_min=exact)
        m = -(qw.scales.float() * qw.zeros.float())
        fits = torch.equal(m.half().float(), m)
        assert fits == exact
    assert (qw.dequantize() - w).abs().max() <= qw.scales.float().max()  # still a 4-bit grid around w


@pytest.mark.parametrize("fields,named", [
    ({"bits": 5, "layout": "gguf"}, "asymmetric 5-bit"),
    ({"bits": 4, "group_size": 48, "layout": "gguf"}, "group_size"),
    ({"bits": 8, "symmetric": False, "layout": "gguf"}, "8-bit"),
])
def test_gguf_layout_refuses_what_has_no_block_type(fields, named):
    with pytest.raises(SpecError, match=named):
        parse_spec({"kind": "quantize", "inputs": {"model": "m"}, "method": {"type": "rtn"}, **fields})


def test_unknown_format_and_unquantized_input_are_refused(tiny_llama, tmp_path):
    with pytest.raises(SpecError, match="target.format"):
        parse_spec({"kind": "export", "inputs": {"model": "m"}, "target": {"format": "onnx"}})
    with pytest.raises(DataError, match="not a bitsmith-quantized model"):
        exported(tiny_llama, tmp_path / "e", "gguf")


# -- a searched mixed-precision allocation ---------------------------------------------------------
@pytest.mark.skipif(not HAS_CT, reason="compressed-tensors is not installed")
def test_searched_2_3_4_bit_allocation_loads_in_transformers_with_equal_logits(trained_lm, pydoc_corpus, tmp_path):
    """A real `search` (dp over 2/3/4-bit symmetric levels, 3 bits average) exported to compressed-tensors."""
    from transformers import AutoModelForCausalLM

    from bitsmith.workers import search

    spec = parse_spec({"kind": "search", "inputs": {"model": "m", "calibration": "c"}, "method": {"type": "dp"},
                       "levels": {"bits": [2, 3, 4], "group_size": 32, "symmetric": True, "sequences": 8,
                                  "seq_len": 64, "method": {"type": "rtn"}, "mse_clip": False},
                       "budget": {"type": "avg_bits", "bits_per_weight": 3.0},
                       "report": {"uniform": "levels", "test_max_chunks": 4, "baseline_dp": False,
                                  "pareto_uniform_levels": False}})
    ctx, _ = local_context(tmp_path / "s", {"model": trained_lm, "calibration": pydoc_corpus})
    qdir = search.run(spec, ctx).artifacts["model"].path
    widths = {e["bits"] for e in quant_format.quantization_config(qdir)["modules"].values()}
    assert len(widths) >= 2, widths  # really mixed
    art = exported(qdir, tmp_path / "e", "compressed-tensors")
    assert art.metadata["config_groups"] == len(widths)
    theirs = AutoModelForCausalLM.from_pretrained(art.path, dtype=torch.float32)
    ids = torch.randint(0, 1024, (2, 32), generator=torch.Generator().manual_seed(3))
    assert torch.equal(logits(theirs, ids), logits(quant_format.load_quantized_model(qdir), ids))
