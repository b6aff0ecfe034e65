"""`quantize` jobs: weight-only post-training quantization (RTN or GPTQ) of a causal LM, block by block.

Reads top to bottom: load the model and calibration texts, plan which linear layers get which
bits/group size, run the standard GPTQ sequential loop (inputs of decoder block k come from the
already-quantized blocks before it; one block's activations in memory at a time), pack the result into
`QuantizedLinear` modules and write the `model`, `report` (and optional `export`) artifacts. The
calibration machinery (layer plans, batches, the block-sequential loop, Hessians) is `calibration.py`.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bitsmith.kernels.gptq import output_relative_error
from bitsmith.kernels.qlinear import QuantizedLinear
from bitsmith.platform.context import OutputArtifact, RunContext, WorkerOutputs
from bitsmith.platform.errors import DataError, SpecError
from bitsmith.platform.specs.quantize import GPTQMethod, QuantizeSpec

from . import quant_format
from .calibration import (ArchLayout, LayerPlan, architecture_layout, block_layers, calibration_batches,
                          collect_hessians, dense_weight, plan_layers, sequential_blocks)
from .models import DTYPES, load_model_and_tokenizer, resolve_device
from .quantizers import QuantizeFn, method_for

log = logging.getLogger(__name__)


def run(spec: QuantizeSpec, ctx: RunContext) -> WorkerOutputs:
    start = time.perf_counter()
    torch.set_num_threads(spec.compute.threads)  # resolved from the job's cpus when the spec was parsed
    ctx.seed_everything()
    device, dtype = resolve_device(spec.compute.device), DTYPES[spec.compute.dtype]
    model_in = ctx.input("model")
    if quant_format.is_bitsmith_quantized(model_in.path):
        raise DataError(f"inputs.model: {model_in.path} is already quantized; expected an unquantized model")
    model, tokenizer = load_model_and_tokenizer(model_in.path, "cpu", dtype)
    layout = architecture_layout(model)
    plans = plan_layers(model, layout, bits=spec.bits, group_size=spec.group_size, modules=spec.modules,
                        overrides=spec.overrides)
    _check_export(spec, plans)
    quantize_fn = method_for(spec.method.type)
    batches = read_calibration(spec, ctx, tokenizer)
    packed, report = quantize_blocks(spec, ctx, model, layout, plans, batches, quantize_fn, device)
    for name, layer in packed.items():
        quant_format.replace_module(model, name, layer)
    return _write_outputs(spec, ctx, model, plans, report, model_in, time.perf_counter() - start)


def _check_export(spec: QuantizeSpec, plans: dict[str, LayerPlan]) -> None:
    """Refuse up front what the compressed-tensors export cannot represent (before any work)."""
    if spec.layout == "gguf":
        _check_gguf_layout(spec, plans)
    if spec.export != "compressed-tensors":
        return
    conv = [p.name for p in plans.values() if p.transposed]
    if conv:
        raise SpecError(f"export: compressed-tensors quantizes nn.Linear only, but {conv[0]} is a Conv1D "
                        "(GPT-2 style); expected export: none for this architecture")
    if isinstance(spec.method, GPTQMethod) and spec.method.act_order and not spec.method.static_groups \
            and any(p.group_size < p.in_features for p in plans.values()):
        raise SpecError("export: compressed-tensors needs contiguous groups; expected method.static_groups=true "
                        "with method.act_order=true")


def _check_gguf_layout(spec: QuantizeSpec, plans: dict[str, LayerPlan]) -> None:
    """`layout: gguf` promises Q4_0/Q4_1/Q8_0 blocks: every layer's groups must be whole 32-column blocks."""
    for plan in plans.values():
        if plan.group_size % 32:
            raise SpecError(f"layout: gguf: module {plan.name} has groups of {plan.group_size} columns; expected "
                            "a group size that is a multiple of 32 (GGUF blocks hold 32 weights)")


def read_calibration(spec: QuantizeSpec, ctx: RunContext, tokenizer: Any) -> list[Tensor]:
    """The calibration token batches (none without a calibration input)."""
    if spec.inputs.calibration is None:
        return []
    from .data.datasets import read_texts

    texts = read_texts(ctx.input("calibration").path, spec.calibration.split)
    cal = spec.calibration
    return calibration_batches(texts, tokenizer, cal.sequences, cal.seq_len, cal.batch_size, ctx.seed)


@torch.no_grad()
def quantize_blocks(spec: QuantizeSpec, ctx: RunContext, model: nn.Module, layout: ArchLayout,
                    plans: dict[str, LayerPlan], batches: list[Tensor], quantize_fn: QuantizeFn,
                    device: torch.device) -> tuple[dict[str, QuantizedLinear], list[dict[str, Any]]]:
    """GPTQ's sequential loop: quantize each block's planned layers in place (so later blocks see the
    quantized ones); returns the packed layers (on the CPU) and one report row per layer."""
    report: list[dict[str, Any]] = []
    packed: dict[str, QuantizedLinear] = {}  # kept on the CPU until the modules are swapped in
    with ctx.progress(total=len(model.get_submodule(layout.blocks)), desc="quantize blocks") as bar:
        for k, block, calls in sequential_blocks(model, layout, batches, device):
            block_start = time.perf_counter()
            targets = block_layers(model, plans, k)
            hessians = collect_hessians(block, targets, calls, device)
            for name, module in targets.items():
                plan = plans[name]
                t0 = time.perf_counter()
                weight = dense_weight(module).detach().float().clone()
                qw, warnings = quantize_fn(weight, hessians.get(name), spec.method, plan.bits, plan.group_size,
                                           spec.symmetric, spec.mse_clip, exact_min=spec.layout == "gguf")
                w_hat = qw.dequantize()
                dense = w_hat.T if plan.transposed else w_hat
                module.weight.data.copy_(dense.to(module.weight.dtype))  # later blocks see the quantized layer
                bias = module.bias.detach() if module.bias is not None else None
                packed[name] = QuantizedLinear.from_quantized(qw, bias).to("cpu")
                for w in warnings:
                    log.warning("%s: %s", name, w)
                report.append(_layer_row(plan, packed[name], weight, w_hat, hessians.get(name),
                                         time.perf_counter() - t0, warnings))
            hessians.clear()
            _log_block(ctx, k, [r for r in report if r["block"] == k], time.perf_counter() - block_start)
            bar.update(1, block=k)
    return packed, report


def _log_block(ctx: RunContext, k: int, rows: list[dict[str, Any]], seconds: float) -> None:
    errors = [r["rel_error"] for r in rows if r["rel_error"] is not None]
    block_metrics = {"block_seconds": seconds}
    if errors:
        block_metrics["block_mean_rel_error"] = sum(errors) / len(errors)
    ctx.log_metrics(block_metrics, step=k)
    ctx.log_metrics({f"rel_error/{r['name']}": r["rel_error"] for r in rows if r["rel_error"] is not None}, step=k)


def _layer_row(plan: LayerPlan, layer: QuantizedLinear, weight: Tensor, w_hat: Tensor, hessian: Tensor | None,
               seconds: float, warnings: list[str]) -> dict[str, Any]:
    weight_err = float(((weight - w_hat) ** 2).sum() / (weight ** 2).sum().clamp(min=1e-30))
    rel = output_relative_error(weight, w_hat, hessian) if hessian is not None else None
    return {"name": plan.name, "block": plan.block, "bits": plan.bits, "group_size": plan.group_size,
            "symmetric": layer.symmetric, "act_order": layer.g_idx is not None,
            "shape": list(weight.shape), "storage_bits": layer.storage_bits(),
            "effective_bits": layer.effective_bits_per_weight(),
            "rel_error": None if rel is None or math.isnan(rel) else rel, "weight_rel_error": weight_err,
            "seconds": seconds, "warnings": list(warnings)}


def _write_outputs(spec: QuantizeSpec, ctx: RunContext, model: nn.Module, plans: dict[str, LayerPlan],
                   report: list[dict[str, Any]], model_in: Any, seconds: float) -> WorkerOutputs:
    weights = sum(r["shape"][0] * r["shape"][1] for r in report)
    bits_per_weight = sum(r["storage_bits"] for r in report) / weights
    dense_bits = sum(p.numel() * p.element_size() * 8 for p in model.parameters())
    stored_bits = dense_bits + sum(r["storage_bits"] for r in report)
    n_params = sum(p.numel() for p in model.parameters()) + weights
    errors = [r["rel_error"] for r in report if r["rel_error"] is not None]
    summary = {
        "method": spec.method.type, "bits": spec.bits, "group_size": spec.group_size, "symmetric": spec.symmetric,
        "effective_bits_per_weight": bits_per_weight, "model_bits_per_parameter": stored_bits / n_params,
        "quantized_layers": len(report), "quantized_weights": weights,
        "mean_rel_error": sum(errors) / len(errors) if errors else None,
        "layers_with_warnings": sum(1 for r in report if r["warnings"]), "seconds": seconds,
    }
    modules = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            modules[name] = quant_format.module_entry(module, transposed=plans[name].transposed)
    quant_config = {"method": spec.method.model_dump(mode="json"), "bits": spec.bits, "group_size": spec.group_size,
                    "symmetric": spec.symmetric, "mse_clip": spec.mse_clip, "scale_dtype": "float16",
                    "modules": modules}
    meta = {"kind": "quantized-model", "format": quant_format.FORMAT, "method": spec.method.type,
            "bits": spec.bits, "group_size": spec.group_size, "symmetric": spec.symmetric,
            "effective_bits_per_weight": bits_per_weight, "base_model_digest": model_in.digest}
    model_dir = quant_format.save_quantized_model(model, ctx.output_path("model"), quant_config,
                                                  source_dir=model_in.path, artifact_meta=meta)
    report_path = ctx.output_path("report.json")
    report_path.write_text(json.dumps({"summary": summary, "layers": report}, indent=2) + "\n")

    artifacts = {
        "model": OutputArtifact(model_dir, kind="quantized-model", metadata=meta),
        "report": OutputArtifact(report_path, kind="report", metadata={"quantized_layers": len(report)}),
    }
    if spec.export == "compressed-tensors":
        export_dir = quant_format.export_compressed_tensors(model_dir, ctx.output_path("export"))
        artifacts["export"] = OutputArtifact(Path(export_dir), kind="compressed-tensors-model",
                                             metadata={"format": "pack-quantized", "bits": spec.bits})
    metrics = {"effective_bits_per_weight": bits_per_weight, "quantized_layers": float(len(report)),
               "seconds": seconds, "model_bits_per_parameter": summary["model_bits_per_parameter"],
               "layers_with_warnings": float(sum(1 for r in report if r["warnings"]))}
    if errors:
        metrics["mean_rel_error"] = summary["mean_rel_error"]
    ctx.log_metrics(metrics)
    ctx.flush_metrics()
    return WorkerOutputs(artifacts=artifacts, metrics=metrics)
