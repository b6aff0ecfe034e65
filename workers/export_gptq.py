"""The GPTQ checkpoint layout (AutoGPTQ / GPTQModel / vLLM), mixed precision as GPTQModel's `dynamic`.

Per quantized module (shapes as the GPTQ kernels read them):
  qweight [in*bits/32, out] int32  unsigned codes, a little-endian bit stream along the input dim
                                   (8 x 4-bit, 16 x 2-bit, 4 x 8-bit per word; 3-bit: 32 codes per 3 words)
  qzeros  [n_groups, out*bits/32] int32  zero points packed along the output dim; `gptq` (v1) stores
                                   zero - 1 (readers add 1 back), `gptq_v2` stores them as is
  scales  [n_groups, out] fp16,  g_idx [in] int32 (group of each input column),  bias
`quantize_config.json` (and `config.json`'s quantization_config) hold the most common (bits, group size,
sym) and, per other module, a `dynamic` override `"+:^NAME$": {bits, group_size, sym}`; dense linear layers
inside the blocks are `"-:^NAME$"` (not quantized).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from bitsmith.kernels.packing import pack_codes

from . import quant_format
from .export_common import ExportResult, read_quantized_model, refuse, safetensors_bits
from .tensorfiles import save_tensors

FORMAT = "gptq"
GPTQ_BITS = (2, 3, 4, 8)
WEIGHTS_FILE = "model.safetensors"


def _scheme(layer: Any) -> tuple[int, int, bool]:
    group = -1 if layer.group_size == layer.in_features else layer.group_size
    return layer.bits, group, layer.symmetric


def write_gptq(path: Path, out_dir: Path, checkpoint_format: str = "auto") -> ExportResult:
    model = read_quantized_model(path)
    tensors: dict[str, torch.Tensor] = {}
    weight_keys: set[str] = set()
    zero_is_zero = False
    unpacked = {}
    for name, layer in model.layers.items():
        if model.entry(name)["transposed"]:
            raise refuse(FORMAT, name, "a Conv1D (GPT-2 style)", "nn.Linear layers (Llama/Qwen2/Mistral/OPT)")
        if layer.bits not in GPTQ_BITS:
            raise refuse(FORMAT, name, f"{layer.bits}-bit codes, which GPTQ kernels do not read",
                         f"bits in {GPTQ_BITS}")
        for dim, size in (("in_features", layer.in_features), ("out_features", layer.out_features)):
            if size % 32:
                raise refuse(FORMAT, name, f"{dim}={size} is not a multiple of 32", "whole packed words")
        qw = layer.unpacked()
        unpacked[name] = qw
        zero_is_zero |= bool((qw.zeros == 0).any())
    if checkpoint_format == "auto":
        checkpoint_format = "gptq_v2" if zero_is_zero else "gptq"
    elif checkpoint_format == "gptq" and zero_is_zero:
        raise refuse(FORMAT, next(n for n, q in unpacked.items() if bool((q.zeros == 0).any())),
                     "has a zero point of 0, which checkpoint_format=gptq stores as -1 (readers then add 1 "
                     "back to an overflowed nibble)", "target.checkpoint_format=gptq_v2 or auto")
    offset = 1 if checkpoint_format == "gptq" else 0
    for name, layer in model.layers.items():
        qw = unpacked[name]
        keys = {
            f"{name}.qweight": pack_codes(qw.codes, layer.bits).T.contiguous(),
            f"{name}.qzeros": pack_codes(((qw.zeros - offset) % (1 << layer.bits)).T.contiguous(), layer.bits),
            f"{name}.scales": qw.scales.to(torch.float16).T.contiguous(),
            f"{name}.g_idx": (qw.column_groups().to(torch.int32)).contiguous(),
        }
        tensors.update(keys)
        weight_keys.update(keys)
        if layer.bias is not None:
            tensors[f"{name}.bias"] = layer.bias
    tensors.update({k: v.contiguous() for k, v in model.dense.items()})
    qcfg = quantize_config(model, checkpoint_format)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, out_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    (out_dir / "quantize_config.json").write_text(json.dumps(qcfg, indent=2, sort_keys=True) + "\n")
    config = {**model.config, "quantization_config": qcfg}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    quant_format.copy_tokenizer_files(path, out_dir)
    notes = {"checkpoint_format": checkpoint_format, "dynamic_overrides": len(qcfg["dynamic"])}
    if checkpoint_format == "gptq_v2" and zero_is_zero:
        notes["note"] = "a zero point is 0: written as gptq_v2 (zero points as is), which GPTQModel reads"
    return ExportResult(out_dir, stored_bits=safetensors_bits(out_dir / WEIGHTS_FILE),
                        quantized_bits=safetensors_bits(out_dir / WEIGHTS_FILE, weight_keys), metadata=notes)


def quantize_config(model: Any, checkpoint_format: str) -> dict[str, Any]:
    """GPTQModel's quantize_config: the most common scheme, `dynamic` overrides for the rest."""
    counts = Counter(_scheme(layer) for layer in model.layers.values())
    (bits, group, sym), _ = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    dynamic: dict[str, dict[str, Any]] = {}
    for name, layer in model.layers.items():
        b, g, s = _scheme(layer)
        if (b, g, s) != (bits, group, sym):
            dynamic["+:^" + re.escape(name) + "$"] = {"bits": b, "group_size": g, "sym": s}
    blocks = {n.rsplit(".", 2)[0] for n in model.layers}  # e.g. model.layers.3 of model.layers.3.mlp.up_proj
    for name in model.dense_linear_names():
        if any(name.startswith(b + ".") for b in blocks):
            dynamic["-:^" + re.escape(name) + "$"] = {}
    return {"quant_method": "gptq", "checkpoint_format": checkpoint_format, "bits": bits, "group_size": group,
            "sym": sym, "desc_act": any(layer.g_idx is not None for layer in model.layers.values()),
            "lm_head": False, "true_sequential": True, "dynamic": dynamic}
