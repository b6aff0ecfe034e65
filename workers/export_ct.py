"""compressed-tensors `pack-quantized` export of a bitsmith-quantized model, mixed precision included.

Per quantized module: `weight_packed` (int32, codes packed along the input dim, the same bit stream as
compressed-tensors' `pack_to_int32` of the signed codes), `weight_scale` [out, n_groups],
`weight_zero_point` (asymmetric only: signed zero points packed along the output dim), `weight_shape`.
One config group per (bits, group size, symmetry) with `re:^NAME$` targets; every other linear layer is
in `ignore`. transformers loads a symmetric checkpoint as is, an asymmetric one with
`CompressedTensorsConfig(dequantize=True)` (FACTS: the default path fails on zero-point shapes).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from bitsmith.platform.errors import SpecError

from . import quant_format
from .export_common import ExportResult, QuantizedModel, read_quantized_model, refuse, safetensors_bits
from .tensorfiles import save_tensors

FORMAT = "compressed-tensors"
WEIGHTS_FILE = "model.safetensors"


def quantization_config(model: QuantizedModel) -> dict[str, Any]:
    """The `quantization_config` block: one group per scheme, explicit targets, dense linears ignored."""
    schemes: dict[tuple[int, int | None, bool], list[str]] = {}
    for name, layer in model.layers.items():
        group = None if layer.group_size == layer.in_features else layer.group_size
        schemes.setdefault((layer.bits, group, layer.symmetric), []).append(name)
    groups = {}
    for i, ((bits, group, sym), names) in enumerate(sorted(schemes.items(), key=lambda kv: str(kv[0]))):
        groups[f"group_{i}"] = {
            "targets": ["re:^" + re.escape(n) + "$" for n in names],
            "weights": {"num_bits": bits, "type": "int", "symmetric": sym, "dynamic": False,
                        "strategy": "channel" if group is None else "group", "group_size": group},
            "input_activations": None, "output_activations": None, "format": "pack-quantized"}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": groups, "ignore": model.dense_linear_names(), "kv_cache_scheme": None}


def validate_config(qcfg: dict[str, Any]) -> None:
    """Check the block with compressed-tensors' own config model (when the library is installed)."""
    try:
        from compressed_tensors.quantization import QuantizationConfig
    except ImportError:
        return
    QuantizationConfig.model_validate(qcfg)


def write_compressed_tensors(path: Path, out_dir: Path) -> ExportResult:
    model = read_quantized_model(path)
    out: dict[str, torch.Tensor] = {}
    weight_keys: set[str] = set()
    for name, layer in model.layers.items():
        if model.entry(name)["transposed"]:
            raise refuse(FORMAT, name, "a Conv1D (GPT-2 style); compressed-tensors quantizes nn.Linear only",
                         "a Llama/Qwen2/Mistral/OPT model")
        if layer.g_idx is not None:
            raise refuse(FORMAT, name, "act-order groups (g_idx)",
                         "a model quantized with method.static_groups=true or act_order=false")
        keys = {f"{name}.weight_packed": layer.qweight.clone(), f"{name}.weight_scale": layer.scales.float(),
                f"{name}.weight_shape": torch.tensor([layer.out_features, layer.in_features], dtype=torch.int64)}
        if layer.qzeros is not None:  # the same bits as pack_to_int32(zero - 2**(b-1), packed_dim=0)
            keys[f"{name}.weight_zero_point"] = layer.qzeros.clone()
        out.update(keys)
        weight_keys.update(keys)
        if layer.bias is not None:
            out[f"{name}.bias"] = layer.bias
    out.update({k: v.contiguous() for k, v in model.dense.items()})
    qcfg = quantization_config(model)
    try:
        validate_config(qcfg)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise SpecError(f"target.format={FORMAT}: the written config does not validate: {exc}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(out, out_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    config = {**model.config, "quantization_config": qcfg}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    quant_format.copy_tokenizer_files(path, out_dir)
    return ExportResult(out_dir, stored_bits=safetensors_bits(out_dir / WEIGHTS_FILE),
                        quantized_bits=safetensors_bits(out_dir / WEIGHTS_FILE, weight_keys),
                        metadata={"config_groups": len(qcfg["config_groups"]), "ignored": qcfg["ignore"]})
