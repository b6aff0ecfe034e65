"""What every export writer needs of a quantized model: its layers, the linear modules it left dense,
and the bits-per-weight accounting of the files written."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bitsmith.kernels.qlinear import QuantizedLinear
from bitsmith.platform.errors import SpecError

from . import quant_format


@dataclass
class QuantizedModel:
    """A bitsmith-quantized directory read for export."""

    path: Path
    config: dict[str, Any]  # config.json without quantization_config
    quant_config: dict[str, Any]
    dense: dict[str, torch.Tensor]  # stored tensors outside the quantized modules (tied ones once)
    layers: dict[str, QuantizedLinear]

    def n_parameters(self) -> int:
        """Parameters of the dense model (tied ones once): what bits per weight divides by."""
        return sum(t.numel() for t in self.dense.values() if t.is_floating_point()) + \
            sum(q.in_features * q.out_features for q in self.layers.values())

    def entry(self, name: str) -> dict[str, Any]:
        return self.quant_config["modules"][name]

    def dense_linear_names(self) -> list[str]:
        """Linear modules of the architecture left unquantized (lm_head among them), built on the meta device."""
        from transformers import AutoConfig, AutoModelForCausalLM

        fields = dict(self.config)
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in self.layers]


def read_quantized_model(path: Path) -> QuantizedModel:
    qc, dense, layers = quant_format.read_quantized_layers(path)
    config = quant_format.read_config(path)
    config.pop("quantization_config", None)
    return QuantizedModel(Path(path), config, qc, dense, layers)


def refuse(fmt: str, name: str, what: str, expected: str) -> SpecError:
    """The error of a layer a format cannot hold: `target.format=F: module M: what; expected ...`."""
    return SpecError(f"target.format={fmt}: module {name}: {what}; expected {expected}")


@dataclass
class ExportResult:
    """What a writer produced: the file or folder, its stored tensor bits, and notes for the metadata."""

    path: Path
    stored_bits: int  # every tensor written (codes, scales, zeros, indices, dense leftovers)
    quantized_bits: int  # the tensors that describe the quantized layers' weights
    metadata: dict[str, Any] = field(default_factory=dict)


def safetensors_bits(file: Path, keys: set[str] | None = None) -> int:
    """Bits of the tensors stored in a safetensors file (only `keys` when given), from its header."""
    import json
    import struct

    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return sum(8 * (v["data_offsets"][1] - v["data_offsets"][0]) for k, v in header.items()
               if k != "__metadata__" and (keys is None or k in keys))
