"""Load a model artifact (a plain Hugging Face directory or a bitsmith-quantized one) with its tokenizer."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from bitsmith.platform.errors import DataError
from bitsmith.workers.models_import import refuse_code_and_pickles

log = logging.getLogger(__name__)

# How every model is loaded from an artifact: never run its code, never unpickle its weights.
SAFE_LOADING: dict[str, Any] = {"trust_remote_code": False, "use_safetensors": True}

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """`auto` means CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DataError("device: cuda asked for but torch sees no GPU; expected device cpu or auto")
    return torch.device(device)


def _quantized_loader() -> Any:
    """`bitsmith.workers.quant_format` when installed (it is imported lazily: heavy, optional)."""
    try:
        from bitsmith.workers import quant_format
    except ImportError:
        return None
    return quant_format


def load_model_and_tokenizer(path: str | Path, device: str | torch.device = "cpu",
                             dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, Any]:
    """The model in eval mode on `device` and its tokenizer; nothing is downloaded.

    A bitsmith-quantized directory is loaded by `quant_format.load_quantized_model`; anything else
    must be a Hugging Face causal-LM directory (config.json + weights + tokenizer files).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: model artifact is not a directory; expected a Hugging Face model directory")
    refuse_code_and_pickles(path)
    device = torch.device(device) if isinstance(device, str) else device
    quant_format = _quantized_loader()
    if quant_format is not None and quant_format.is_bitsmith_quantized(path):
        model = quant_format.load_quantized_model(path, device, dtype)
    else:
        if not (path / "config.json").is_file():
            raise DataError(f"{path}: no config.json; expected a Hugging Face model directory "
                            "(or a bitsmith-quantized one)")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True, **SAFE_LOADING)
        model.to(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot load the tokenizer ({exc}); "
                        "expected tokenizer files beside the model") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    model.eval()
    log.info("loaded %s (%s, %s, %.1f M parameters)", path, device, dtype,
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model, tokenizer


def model_max_length(model: torch.nn.Module, tokenizer: Any, default: int = 2048) -> int:
    """The context length lm-evaluation-harness would use: the model config, then the tokenizer."""
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value:
            return int(value)
    length = getattr(tokenizer, "model_max_length", None)
    if length and length < 10**9:
        return int(length)
    return default
