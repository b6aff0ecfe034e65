"""`export` jobs: write a quantized model (a `quantize` or `search` output) in a format serving runtimes load.

Reads top to bottom: check the input is a bitsmith-quantized model, run the writer registered for
`target.format` (compressed-tensors, gptq, gguf: one module each), and return one `export` artifact whose
metadata carries the format and the effective bits per weight (every stored tensor, codes, scales, zero
points, indices and the dense leftovers, over the dense model's parameter count).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bitsmith.platform.context import OutputArtifact, RunContext, WorkerOutputs
from bitsmith.platform.errors import DataError
from bitsmith.platform.specs.export import CompressedTensorsTarget, ExportSpec, GGUFTarget, GPTQTarget

from . import quant_format
from .export_common import ExportResult, read_quantized_model
from .registry import Registry

log = logging.getLogger(__name__)
Writer = Callable[[Path, Path, object], ExportResult]
WRITERS: Registry[Writer] = Registry("target.format", "export format")


def run(spec: ExportSpec, ctx: RunContext) -> WorkerOutputs:
    start = time.perf_counter()
    torch.set_num_threads(1)
    model_in = ctx.input("model")
    if not quant_format.is_bitsmith_quantized(model_in.path):
        raise DataError(f"inputs.model: {model_in.path} is not a bitsmith-quantized model; expected the `model` "
                        "output of a quantize or search run")
    fmt = spec.target.format
    writer = WRITERS.lookup(fmt)
    out = ctx.output_path("export")
    out.mkdir(parents=True, exist_ok=True)
    result = writer(Path(model_in.path), out, spec.target)
    n_params = read_quantized_model(Path(model_in.path)).n_parameters()
    n_quantized = sum(e["in_features"] * e["out_features"]
                      for e in quant_format.quantization_config(model_in.path)["modules"].values())
    meta = {"kind": "export", "format": fmt, "bits_per_weight": result.stored_bits / n_params,
            "quantized_bits_per_weight": result.quantized_bits / n_quantized, "parameters": n_params,
            "stored_bytes": result.stored_bits // 8, "source_digest": model_in.digest,
            "source_method": model_in.metadata.get("method"), **result.metadata}
    metrics = {"bits_per_weight": meta["bits_per_weight"], "quantized_bits_per_weight":
               meta["quantized_bits_per_weight"], "seconds": time.perf_counter() - start}
    ctx.log_metrics(metrics)
    ctx.flush_metrics()
    return WorkerOutputs(artifacts={"export": OutputArtifact(result.path, kind="export", metadata=meta)},
                         metrics=metrics)


@WRITERS.register("compressed-tensors")
def export_compressed_tensors(model_dir: Path, out: Path, target: CompressedTensorsTarget) -> ExportResult:
    from .export_ct import write_compressed_tensors

    return write_compressed_tensors(model_dir, out)


@WRITERS.register("gptq")
def export_gptq(model_dir: Path, out: Path, target: GPTQTarget) -> ExportResult:
    from .export_gptq import write_gptq

    return write_gptq(model_dir, out, target.checkpoint_format)


@WRITERS.register("gguf")
def export_gguf(model_dir: Path, out: Path, target: GGUFTarget) -> ExportResult:
    from .export_gguf import write_gguf

    return write_gguf(model_dir, out / "model.gguf", target.float_type, target.quantized_weights)
