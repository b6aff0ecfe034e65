"""Bring local models in: check a Hugging Face directory, or convert a GGUF file to safetensors."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bitsmith.platform.digests import write_artifact_meta
from bitsmith.platform.errors import ArtifactError, DataError
from bitsmith.platform.specs.strict import StrictInputError, load_json_file


# Files that carry code or pickles: transformers would run or unpickle them; bitsmith never does.
CODE_AND_PICKLE_SUFFIXES = (".py", ".pyc", ".so", ".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5")
# Configs whose `auto_map` points transformers at Python files inside the model directory.
AUTO_MAP_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def read_json_file(path: Path) -> dict[str, Any]:
    """A JSON object from `path` (strict: no NaN, no duplicate keys); a `DataError` naming the file otherwise."""
    try:
        return load_json_file(path)
    except StrictInputError as exc:
        raise DataError(str(exc)) from None


def refuse_code_and_pickles(path: Path) -> None:
    """Refuse a model directory that ships Python code, pickles or an `auto_map` naming custom code."""
    path = Path(path)
    for file in sorted(path.rglob("*")):
        if file.suffix.lower() in CODE_AND_PICKLE_SUFFIXES:
            raise DataError(f"{file}: a {file.suffix} file in a model directory; expected safetensors weights, "
                            "JSON and tokenizer files only (bitsmith never runs code or unpickles from artifacts)",
                            hint="convert once with transformers: model.save_pretrained(dir, safe_serialization=True)"
                                 ", then copy the directory without the offending files")
    for name in AUTO_MAP_CONFIGS:
        config = path / name
        if config.is_file() and "auto_map" in read_json_file(config):
            raise DataError(f"{config}: auto_map names custom Python code; expected a model class that "
                            "transformers ships (bitsmith never runs code from artifacts)")


def describe_hf_model(path: Path) -> dict[str, Any]:
    """Metadata of an HF model directory; refuses directories whose weights are not safetensors, and any
    directory shipping code or pickles (`refuse_code_and_pickles`)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise DataError(f"{path}: no config.json; expected a Hugging Face model directory")
    config = read_json_file(config_file)
    weights = sorted(p.name for p in path.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        found = f" (found pickle files: {', '.join(pickled)})" if pickled else ""
        raise DataError(
            f"{path}: no *.safetensors weights{found}; "
            "expected safetensors (bitsmith never loads pickles from artifacts)",
            hint="convert once with transformers: model.save_pretrained(dir, safe_serialization=True)")
    refuse_code_and_pickles(path)
    return {
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "model_type": config.get("model_type"),
        "hidden_size": config.get("hidden_size"),
        "layers": config.get("num_hidden_layers"),
        "vocab_size": config.get("vocab_size"),
        "weights": weights,
        "has_tokenizer": any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")),
        "quantized": "quantization_config" in config,
    }


def convert_gguf(gguf_file: Path, dest: Path) -> Path:
    """GGUF -> standard HF directory (safetensors + tokenizer), through transformers (needs gguf, accelerate)."""
    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise ArtifactError(f"{gguf_file}: GGUF file not found")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ArtifactError(f"{gguf_file}: converting GGUF needs the `gguf` and `accelerate` packages",
                            hint="pip install 'bitsmith[gguf]'") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = dest.parent / (dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32,
                                                 trust_remote_code=False, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, trust_remote_code=False,
                                              local_files_only=True)
    # transformers dequantizes GGUF weights on load but keeps a GGUF "quantizer" that refuses to save;
    # the tensors are plain fp32 now, so drop it and save a standard checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    write_artifact_meta(tmp, {"kind": "model", "source": {"gguf": gguf_file.name}})
    tmp.rename(dest)
    return dest
