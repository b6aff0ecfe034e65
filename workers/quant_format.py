"""bitsmith's quantized-model directory format: write it, recognise it, load it back without the
original model, and export it to the compressed-tensors `pack-quantized` layout.

A quantized model directory is a Hugging Face directory:
- `config.json`: the model config plus `quantization_config` = {"quant_method": "bitsmith",
  "format": "bitsmith-packed", "format_version": 1, "method", "bits", "group_size", "symmetric",
  "modules": {name: {bits, group_size, symmetric, act_order, in_features, out_features, bias,
  transposed}}} (group_size is the number of input columns per group; in_features when per-channel);
- `model.safetensors`: every non-quantized parameter as is, and for each quantized module the
  `QuantizedLinear` buffers `qweight`, `scales`, `qzeros` (asymmetric), `g_idx` (act-order), `bias`;
  tied parameters are stored once (metadata `bitsmith_aliases`);
- tokenizer files copied from the source model, and `artifact.json`.
No pickle anywhere: safetensors and JSON only.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from bitsmith.workers.tensorfiles import save_tensors
from torch import nn

from bitsmith.kernels.qlinear import QuantizedLinear
from bitsmith.platform.digests import write_artifact_meta
from bitsmith.platform.errors import DataError

QUANT_METHOD = "bitsmith"
FORMAT = "bitsmith-packed"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json", "chat_template.jinja")


def _read_config(path: Path) -> dict[str, Any]:
    file = Path(path) / "config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def is_bitsmith_quantized(path: str | Path) -> bool:
    """True if `path` is a directory holding a model in bitsmith's quantized format."""
    qc = _read_config(Path(path)).get("quantization_config") or {}
    return isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD


def quantization_config(path: str | Path) -> dict[str, Any]:
    """The `quantization_config` of a bitsmith-quantized directory (DataError if it is not one)."""
    if not is_bitsmith_quantized(path):
        raise DataError(f"{path}: not a bitsmith-quantized model directory "
                        f"(config.json has no quantization_config with quant_method={QUANT_METHOD!r})")
    qc = _read_config(Path(path))["quantization_config"]
    if qc.get("format_version", 0) > FORMAT_VERSION:
        raise DataError(f"{path}: format_version {qc['format_version']} is newer than this bitsmith reads "
                        f"({FORMAT_VERSION}); upgrade bitsmith")
    return qc


def module_entry(layer: QuantizedLinear, transposed: bool = False) -> dict[str, Any]:
    return {"bits": layer.bits, "group_size": layer.group_size, "symmetric": layer.symmetric,
            "act_order": layer.g_idx is not None, "in_features": layer.in_features,
            "out_features": layer.out_features, "bias": layer.bias is not None, "transposed": transposed}


def _get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, child = _get_parent(model, name)
    setattr(parent, child, new)


def save_quantized_model(model: nn.Module, out_dir: str | Path, quant_config: dict[str, Any],
                         source_dir: str | Path | None = None,
                         artifact_meta: dict[str, Any] | None = None) -> Path:
    """Write `model` (its quantized modules already `QuantizedLinear`) as a bitsmith-quantized directory.

    `quant_config` must carry "modules" (see `module_entry`) and the job-level fields; tokenizer files
    are copied from `source_dir`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for key, tensor in state.items():
        sig = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and sig in seen:  # tied weights (e.g. lm_head = embed_tokens): store once
            aliases[key] = seen[sig]
            continue
        seen[sig] = key
        tensors[key] = tensor.detach().to("cpu").contiguous()
    save_tensors(tensors, out_dir / WEIGHTS_FILE,
                 metadata={"format": "pt", "bitsmith_format": FORMAT, "bitsmith_aliases": json.dumps(aliases)})
    config = model.config.to_dict()
    config["quantization_config"] = {"quant_method": QUANT_METHOD, "format": FORMAT,
                                     "format_version": FORMAT_VERSION, **quant_config}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if source_dir is not None:
        for name in TOKENIZER_FILES:
            if (Path(source_dir) / name).is_file():
                shutil.copyfile(Path(source_dir) / name, out_dir / name)
    if artifact_meta is not None:
        write_artifact_meta(out_dir, artifact_meta)
    return out_dir


def _read_state(path: Path, with_aliases: bool = True) -> dict[str, torch.Tensor]:
    """The stored tensors; `with_aliases` also fills in tied parameters stored once (sharing memory)."""
    from safetensors import safe_open

    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("bitsmith_aliases", "{}"))
    state = load_file(str(path / WEIGHTS_FILE))
    for alias, key in (aliases.items() if with_aliases else ()):
        state[alias] = state[key]
    return state


def load_quantized_model(path: str | Path, device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32) -> nn.Module:
    """A transformers model built from the directory's config, its quantized modules `QuantizedLinear`.

    Nothing of the original (unquantized) model is needed. Non-quantized parameters take `dtype`;
    packed codes, scales and zero points keep their stored dtypes.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    qc = quantization_config(path)
    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with _skip_random_init():  # every parameter is overwritten from the file below
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for name, entry in qc["modules"].items():
        replace_module(model, name, QuantizedLinear(
            entry["in_features"], entry["out_features"], entry["bits"], entry["group_size"], entry["symmetric"],
            has_g_idx=entry["act_order"], bias=entry["bias"], bias_dtype=dtype))
    state = _read_state(path)
    for key, tensor in state.items():  # floating parameters take the requested dtype; codes stay int
        if tensor.is_floating_point() and not key.endswith(".scales"):
            state[key] = tensor.to(dtype)
    model.load_state_dict(state, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.to(device).eval()


def _skip_random_init() -> Any:
    """transformers' `no_init_weights` where this version has it (a 7B model builds in seconds)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return no_init_weights()


def dequantized_state_dict(path: str | Path, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The dense state dict of a quantized directory, in the original model's layout (`*.weight`
    [out, in], or [in, out] for GPT-2's Conv1D); it loads into the unquantized architecture."""
    path = Path(path)
    qc = quantization_config(path)
    state = _read_state(path)
    for name, entry in qc["modules"].items():
        layer = QuantizedLinear(entry["in_features"], entry["out_features"], entry["bits"], entry["group_size"],
                                entry["symmetric"], has_g_idx=entry["act_order"], bias=entry["bias"])
        prefix = f"{name}."
        own = {k[len(prefix):]: state.pop(k) for k in list(state) if k.startswith(prefix)}
        layer.load_state_dict(own, strict=True)
        weight = layer.dequantized_weight(dtype)
        state[f"{name}.weight"] = weight.T.contiguous() if entry["transposed"] else weight
        if layer.bias is not None:
            state[f"{name}.bias"] = layer.bias.to(dtype)
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}


def dequantize_model(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace every `QuantizedLinear` by a dense `nn.Linear` holding its dequantized weight (in place)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantizedLinear):
            dense = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                              device=module.qweight.device, dtype=dtype)
            dense.weight.data.copy_(module.dequantized_weight(dtype))
            if module.bias is not None:
                dense.bias.data.copy_(module.bias.to(dtype))
            replace_module(model, name, dense)
    return model


def read_quantized_layers(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor],
                                                  dict[str, QuantizedLinear]]:
    """(quantization_config, every stored tensor that is not part of a quantized module, {name: layer}).

    Tied parameters stay stored once (no aliases): a loader re-ties them from the config.
    """
    path = Path(path)
    qc = quantization_config(path)
    state = _read_state(path, with_aliases=False)
    layers: dict[str, QuantizedLinear] = {}
    for name, entry in qc["modules"].items():
        prefix = f"{name}."
        own = {k[len(prefix):]: state.pop(k) for k in list(state) if k.startswith(prefix)}
        layer = QuantizedLinear(entry["in_features"], entry["out_features"], entry["bits"], entry["group_size"],
                                entry["symmetric"], has_g_idx=entry["act_order"], bias=entry["bias"],
                                bias_dtype=own["bias"].dtype if "bias" in own else torch.float32)
        layer.load_state_dict(own, strict=True)
        layers[name] = layer
    return qc, state, layers


def read_config(path: str | Path) -> dict[str, Any]:
    """The directory's config.json as a dict (empty if there is none)."""
    return _read_config(Path(path))


def copy_tokenizer_files(src: str | Path, dest: str | Path) -> None:
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, Path(dest) / name)


def export_compressed_tensors(path: str | Path, out_dir: str | Path) -> Path:
    """Write a bitsmith-quantized directory in the compressed-tensors `pack-quantized` layout
    (see `export_ct.write_compressed_tensors`)."""
    from .export_ct import write_compressed_tensors

    write_compressed_tensors(Path(path), Path(out_dir))
    return Path(out_dir)
