"""GGUF export (llama.cpp's format) of a bitsmith-quantized Llama-family model, written with the `gguf` package.

Codes are copied, not requantized, where a block type holds the layer's layout (groups a multiple of 32
columns, no act-order g_idx): symmetric 2/3/4-bit -> Q4_0 (x = d*(q-8)), asymmetric 2/3/4-bit -> Q4_1
(x = d*q + m with m = -d*zero stored in fp16; exact when that product is an fp16 value, which `quantize`'s
`layout: gguf` guarantees), symmetric 5/6/8-bit -> Q8_0 (x = d*q). 2/3-bit codes thus take 4-bit blocks (GGUF's
2/3-bit types are 256-weight super-blocks with quantized sub-scales, another layout). Every other layer
(asymmetric 5/6/8-bit, act-order, other group sizes) is requantized from its dequantized weight with the gguf
package's reference quantizer (Q5_1 for 5 bits, else Q8_0).
Each tensor is then decoded with gguf's own dequantizer and compared with bitsmith's weight: the metadata
lists per tensor its type, how it was made and whether it is exact (max |diff|). One type per tensor, so a
mixed-precision search keeps its per-layer widths where GGUF has them.
`quantized_weights: dequantized` writes each quantized layer's dequantized weight as F32/F16 instead: the same
weights, multiplied by llama.cpp in float (its Q4/Q8 kernels round the activations to 8-bit blocks first), which
is how tests/workers/test_export_llamacpp.py separates an export error from llama.cpp's own rounding.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitsmith.platform.errors import SpecError

from .export_common import ExportResult, read_quantized_model

FORMAT = "gguf"
BLOCK = 32
ARCHITECTURES = ("llama",)


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise SpecError("target.format=gguf: the `gguf` package is not installed; expected "
                        "`pip install gguf` (make extras)") from None
    return gguf


def _permute_rows(n_rows: int, n_head: int) -> np.ndarray:
    """The row order llama.cpp's converter gives q/k projections (its `permute`; transformers undoes it)."""
    idx = np.arange(n_rows)
    return idx.reshape(n_head, 2, n_rows // n_head // 2).swapaxes(1, 2).reshape(n_rows)


def _fp16_bytes(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.float16).numpy().view(np.uint8).reshape(*x.shape, 2)


def _nibbles(codes: np.ndarray) -> np.ndarray:
    """[R, NB, 32] codes in 0..15 -> [R, NB, 16] bytes: element j low nibble, element j+16 high nibble."""
    return (codes[..., :16] | (codes[..., 16:] << 4)).astype(np.uint8)


def encode_codes(layer: Any, rows: np.ndarray, qtype_name: str) -> np.ndarray | None:
    """The layer's own codes in GGUF blocks [out, n_blocks * type_size] (rows reordered), or None when its
    groups are not whole 32-column blocks. Narrower codes sit inside the wider block type unchanged in value:
    a symmetric b-bit code c is Q4_0's q = c + 8 - 2**(b-1) (Q8_0's c - 2**(b-1)), an asymmetric one is Q4_1's q."""
    qw = layer.unpacked()
    if qw.g_idx is not None or layer.group_size % BLOCK:
        return None
    codes = qw.codes[rows].numpy().astype(np.int64)
    out, n_in = codes.shape
    per_block = torch.arange(n_in // BLOCK) * BLOCK // layer.group_size  # group of each block
    s = qw.scales[rows][:, per_block]  # fp16 [out, NB]
    z = qw.zeros[rows][:, per_block]
    codes = codes.reshape(out, n_in // BLOCK, BLOCK)
    mid = 2 ** (layer.bits - 1)
    if qtype_name == "Q4_0":
        parts = [_fp16_bytes(s), _nibbles(codes + 8 - mid)]
    elif qtype_name == "Q4_1":
        m = -(s.float() * z.float())  # exact in fp32 (11 + 4 significant bits); exact in fp16 only if it fits
        parts = [_fp16_bytes(s), _fp16_bytes(m), _nibbles(codes)]
    elif qtype_name == "Q8_0":
        parts = [_fp16_bytes(s), (codes - mid).astype(np.int8).view(np.uint8)]
    else:
        return None
    return np.concatenate(parts, axis=-1).reshape(out, -1)


def _code_type(layer: Any) -> str | None:
    """The block type that holds the layer's codes as they are (None: requantize)."""
    if layer.bits <= 4:
        return "Q4_0" if layer.symmetric else "Q4_1"
    return "Q8_0" if layer.symmetric else None


def _requant_type(layer: Any) -> str:
    return "Q5_1" if layer.bits == 5 else "Q8_0"


class _Arch:
    """The llama hyper-parameters GGUF stores, read from config.json."""

    def __init__(self, config: dict[str, Any]):
        if config.get("model_type") not in ARCHITECTURES:
            raise SpecError(f"target.format=gguf: model_type {config.get('model_type')!r} is not supported; "
                            f"expected one of {', '.join(ARCHITECTURES)}")
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        if rope.get("rope_type", "default") != "default":
            raise SpecError(f"target.format=gguf: rope type {rope.get('rope_type')!r} is not written; "
                            "expected the default RoPE")
        if config.get("attention_bias") or config.get("mlp_bias"):
            raise SpecError("target.format=gguf: a Llama with attention_bias/mlp_bias is not written; "
                            "expected a model without linear biases")
        self.hidden = config["hidden_size"]
        self.n_head = config["num_attention_heads"]
        self.n_kv = config.get("num_key_value_heads") or self.n_head
        self.head_dim = config.get("head_dim") or self.hidden // self.n_head
        self.n_layers = config["num_hidden_layers"]
        self.rope_theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
        self.config = config

    def write(self, w: Any) -> None:
        c = self.config
        w.add_context_length(c["max_position_embeddings"])
        w.add_embedding_length(self.hidden)
        w.add_feed_forward_length(c["intermediate_size"])
        w.add_block_count(self.n_layers)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_kv)
        w.add_rope_dimension_count(self.head_dim)
        w.add_key_length(self.head_dim)
        w.add_value_length(self.head_dim)
        w.add_rope_freq_base(self.rope_theta)
        w.add_layer_norm_rms_eps(float(c["rms_norm_eps"]))
        w.add_vocab_size(c["vocab_size"])

    def rows(self, hf_name: str, n_rows: int) -> np.ndarray:
        if hf_name.endswith("self_attn.q_proj"):
            return _permute_rows(n_rows, self.n_head)
        if hf_name.endswith("self_attn.k_proj"):
            return _permute_rows(n_rows, self.n_kv)
        return np.arange(n_rows)


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp's name (`tokenizer.ggml.pre`) for the split a tokenizer.json's pre-tokenizer makes: GPT-2's regex
    (`gpt-2`), or SmolLM's single digits before it (`smollm`); anything else `default`, which llama.cpp splits
    with another regex (its tokens can then differ from transformers': the export's metadata says so)."""
    def gpt2_regex(step: dict[str, Any]) -> bool:
        return step.get("type") == "ByteLevel" and step.get("use_regex", True)

    steps = (pre or {}).get("pretokenizers", [pre]) if (pre or {}).get("type") == "Sequence" else [pre or {}]
    if len(steps) == 1 and gpt2_regex(steps[0]):
        return "gpt-2"
    if len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits") \
            and gpt2_regex(steps[1]):
        return "smollm"
    return "default"


def add_tokenizer(gguf: Any, w: Any, path: Path, n_vocab: int) -> str:
    """A byte-level BPE tokenizer as GGUF's `gpt2` model: tokens in id order, types, merges, special ids."""
    import json

    from transformers import AutoTokenizer

    file = path / "tokenizer.json"
    spec = json.loads(file.read_text()) if file.is_file() else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise SpecError(f"target.format=gguf: {path}: tokenizer is not a byte-level BPE tokenizer.json "
                        f"(model type {model.get('type')!r}); expected a GPT-2/Llama-3/SmolLM style tokenizer")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    by_id = {i: t for t, i in tok.get_vocab().items()}
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    tokens, types = [], []
    for i in range(n_vocab):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer_name(spec.get("pre_tokenizer")))
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(path, load_merges=True, n_vocab=n_vocab).add_to_gguf(w, quiet=True)
    return pre_tokenizer_name(spec.get("pre_tokenizer"))


def write_gguf(path: Path, out_file: Path, float_type: str = "f32", quantized_weights: str = "blocks") -> ExportResult:
    gguf = _require_gguf()
    model = read_quantized_model(path)
    arch = _Arch(model.config)
    for name, layer in model.layers.items():
        if layer.in_features % BLOCK:
            raise SpecError(f"target.format=gguf: module {name}: in_features={layer.in_features} is not a "
                            f"multiple of {BLOCK}; expected GGUF's block size to divide every row")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, arch.n_layers)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out_file), "llama")
    w.add_name(model.config.get("_name_or_path") or "bitsmith-export")
    arch.write(w)
    pre = add_tokenizer(gguf, w, path, model.config["vocab_size"])
    stored = quantized = 0
    tensors: list[dict[str, Any]] = []
    for name, layer in model.layers.items():
        gname = names.get_name(name + ".weight", try_suffixes=(".weight",))
        if gname is None:
            raise SpecError(f"target.format=gguf: module {name} has no GGUF tensor name; expected a Llama layout")
        rows = arch.rows(name, layer.out_features)
        ours = layer.dequantized_weight(torch.float32)[rows].numpy()
        if quantized_weights == "dequantized":
            qname, how = float_type.upper(), "dequantized"
            data = ours.astype(np.float16 if float_type == "f16" else np.float32)
        else:
            qname = _code_type(layer)
            data = encode_codes(layer, rows, qname) if qname else None
            how = "codes"
            if data is None:
                qname, how = _requant_type(layer), "requantized"
                data = gguf.quants.quantize(ours, gguf.GGMLQuantizationType[qname])
        qtype = gguf.GGMLQuantizationType[qname]
        back = gguf.quants.dequantize(data, qtype).reshape(ours.shape).astype(np.float32)
        diff = float(np.abs(back - ours).max())
        tensors.append({"tensor": gname, "module": name, "type": qname, "bits": layer.bits,
                        "group_size": layer.group_size, "symmetric": layer.symmetric, "from": how,
                        "exact": bool(np.array_equal(back, ours)), "max_abs_diff": diff})
        w.add_tensor(gname, data, raw_dtype=None if how == "dequantized" else qtype)
        stored += data.nbytes * 8
        quantized += data.nbytes * 8
    for key, tensor in model.dense.items():
        gname = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise SpecError(f"target.format=gguf: tensor {key} has no GGUF name; expected a Llama layout")
        module = key.rsplit(".", 1)[0]
        t = tensor.float()[arch.rows(module, tensor.shape[0])] if tensor.ndim >= 1 else tensor.float()
        arr = t.numpy().astype(np.float16 if float_type == "f16" and t.ndim == 2 else np.float32)
        w.add_tensor(gname, arr)
        stored += arr.nbytes * 8
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    requantized = [t["module"] for t in tensors if t["from"] == "requantized"]
    meta: dict[str, Any] = {
        "tensor_types": dict(sorted(_count(t["type"] for t in tensors).items())),
        "exact_tensors": sum(t["exact"] for t in tensors), "quantized_tensors": len(tensors),
        "max_abs_weight_diff": max((t["max_abs_diff"] for t in tensors), default=0.0), "float_type": float_type,
        "quantized_weights": quantized_weights, "tokenizer_pre": pre, "tensors": tensors}
    if pre == "default":
        meta["tokenizer_note"] = ("the tokenizer's pre-tokenizer is not one llama.cpp names (GPT-2 regex, SmolLM); "
                                  "llama.cpp splits text with its default regex, so its token ids can differ from "
                                  "transformers' (ids given directly score the same)")
    if requantized:
        meta["note"] = (f"{len(requantized)} of {len(tensors)} quantized layers have a layout no GGUF block type "
                        "stores (asymmetric 5/6/8-bit, act-order, or groups not a multiple of 32); they were "
                        "requantized from their dequantized weights with the gguf package's reference quantizer")
    return ExportResult(out_file, stored_bits=stored, quantized_bits=quantized, metadata=meta)


def _count(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts
