"""`quantize` jobs: weight-only post-training quantization (RTN or GPTQ) of a causal LM, block by block.

Reads top to bottom: load the model and calibration texts, plan which linear layers get which
bits/group size, run the standard GPTQ sequential loop (inputs of decoder block k come from the
already-quantized blocks before it; one block's activations in memory at a time), pack the result into
`QuantizedLinear` modules and write the `model`, `report` (and optional `export`) artifacts.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bitsmith.kernels.gptq import accumulate_hessian, gptq_quantize, output_relative_error
from bitsmith.kernels.qlinear import QuantizedLinear
from bitsmith.kernels.quantizers import QuantizedWeight, quantize_rtn
from bitsmith.platform.context import OutputArtifact, RunContext, WorkerOutputs
from bitsmith.platform.errors import DataError, SpecError
from bitsmith.platform.specs.quantize import GPTQMethod, QuantizeSpec, RTNMethod

from . import quant_format
from .models import DTYPES, load_model_and_tokenizer, resolve_device
from .registry import Registry

log = logging.getLogger(__name__)


# -- architectures: where the decoder blocks are and what runs before them -------------------------
@dataclass(frozen=True)
class ArchLayout:
    blocks: str  # dotted path of the ModuleList of decoder blocks
    pre_block: tuple[str, ...]  # modules that run before block 0 (moved to the device to capture inputs)


_LLAMA_LIKE = ArchLayout("model.layers", ("model.embed_tokens", "model.rotary_emb"))
ARCHITECTURES: dict[str, ArchLayout] = {
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "qwen3": _LLAMA_LIKE,
    "opt": ArchLayout("model.decoder.layers", ("model.decoder.embed_tokens", "model.decoder.embed_positions",
                                               "model.decoder.project_in")),
    "gpt2": ArchLayout("transformer.h", ("transformer.wte", "transformer.wpe")),
}


def architecture_layout(model: nn.Module) -> ArchLayout:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise DataError(f"quantize: model_type {model_type!r} not supported; expected one of "
                        f"{', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[model_type]


def _is_linear(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def dense_weight(module: nn.Module) -> Tensor:
    """The [out, in] weight of an nn.Linear, or of GPT-2's Conv1D (stored [in, out])."""
    return module.weight.T if not isinstance(module, nn.Linear) else module.weight


# -- methods registry ------------------------------------------------------------------------------
QuantizeFn = Callable[..., tuple[QuantizedWeight, list[str]]]
METHODS: Registry[QuantizeFn] = Registry("method.type", "quantization method")
register_method, method_for = METHODS.register, METHODS.lookup


@register_method("rtn")
def quantize_layer_rtn(weight: Tensor, hessian: Tensor | None, method: RTNMethod, bits: int, group_size: int,
                       symmetric: bool, mse_clip: bool) -> tuple[QuantizedWeight, list[str]]:
    return quantize_rtn(weight, bits=bits, group_size=group_size, symmetric=symmetric, mse_clip=mse_clip), []


@register_method("gptq")
def quantize_layer_gptq(weight: Tensor, hessian: Tensor | None, method: GPTQMethod, bits: int, group_size: int,
                        symmetric: bool, mse_clip: bool) -> tuple[QuantizedWeight, list[str]]:
    if hessian is None:
        raise SpecError("inputs.calibration: gptq needs calibration inputs; expected a text dataset artifact")
    res = gptq_quantize(weight, hessian, bits=bits, group_size=group_size, symmetric=symmetric, mse_clip=mse_clip,
                        damp_percent=method.damp_percent, block_size=method.block_size,
                        act_order=method.act_order, static_groups=method.static_groups)
    return res.weight, res.warnings


# -- which layers, with which settings -------------------------------------------------------------
@dataclass(frozen=True)
class LayerPlan:
    name: str
    block: int
    bits: int
    group_size: int  # input columns per group (in_features when per-channel)
    in_features: int
    transposed: bool  # GPT-2 Conv1D


def plan_layers(model: nn.Module, layout: ArchLayout, spec: QuantizeSpec) -> dict[str, LayerPlan]:
    """Every linear layer inside the decoder blocks that the spec selects, with its bits and group size.

    Overrides apply by exact module name first, then by the first key that matches the name in full.
    A group size that does not divide a layer's in_features, or an override key that matches no linear
    layer of the blocks, is a SpecError naming the layer or key."""
    blocks = model.get_submodule(layout.blocks)
    plans: dict[str, LayerPlan] = {}
    unused_overrides = set(spec.overrides)
    for k, block in enumerate(blocks):
        for sub, module in block.named_modules():
            name = f"{layout.blocks}.{k}.{sub}"
            if not _is_linear(module):
                continue
            unused_overrides -= {key for key in unused_overrides if key == name or re.fullmatch(key, name)}
            if not any(re.search(p, name) for p in spec.modules.include):
                continue
            if any(re.search(p, name) for p in spec.modules.exclude):
                continue
            bits, group = spec.bits, spec.group_size
            override = spec.overrides.get(name) or next(
                (o for key, o in spec.overrides.items() if re.fullmatch(key, name)), None)
            where = "group_size"
            if override is not None:
                bits = override.bits if override.bits is not None else bits
                if override.group_size is not None:
                    group, where = (None if override.group_size == -1 else override.group_size), "overrides.group_size"
            in_features = dense_weight(module).shape[1]
            if group is not None and in_features % group:
                raise SpecError(f"{where}: {group} does not divide in_features {in_features} of layer {name}; "
                                f"expected a divisor of {in_features} or null (per-channel)",
                                hint="set overrides for this layer, or choose another group_size")
            plans[name] = LayerPlan(name, k, bits, group or in_features, in_features,
                                    transposed=not isinstance(module, nn.Linear))
    if unused_overrides:
        key = sorted(unused_overrides)[0]
        example = next(iter(plans), f"{layout.blocks}.0.<linear>")
        raise SpecError(f"overrides.{key}: matches no linear layer of the decoder blocks; expected a module "
                        f"name (e.g. {example}) or a regex matching names in full")
    if not plans:
        raise SpecError("modules: the include/exclude patterns select no linear layer; expected at least one")
    return plans


# -- calibration data ------------------------------------------------------------------------------
def calibration_batches(texts: list[str], tokenizer: Any, sequences: int, seq_len: int, batch_size: int,
                        seed: int) -> list[Tensor]:
    """`sequences` random windows of `seq_len` tokens from the joined texts, in batches [b, seq_len]."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for row in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
        ids.extend(row)
        if eos is not None:
            ids.append(eos)
    if len(ids) < seq_len:
        raise DataError(f"inputs.calibration: {len(ids)} tokens, fewer than calibration.seq_len={seq_len}; "
                        "expected more text or a shorter seq_len")
    stream = torch.tensor(ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len + 1, (sequences,), generator=gen)
    windows = torch.stack([stream[s:s + seq_len] for s in starts.tolist()])
    return list(windows.split(batch_size))


class _StopForward(Exception):
    """Raised by `_InputCatcher` once block 0's inputs are recorded."""


class _InputCatcher(nn.Module):
    """Stands in for block 0: records its call arguments and stops the forward pass."""

    def __init__(self, block: nn.Module, calls: list[tuple[Tensor, tuple, dict]]):
        super().__init__()
        self.block = block
        self.calls = calls

    def __getattr__(self, name: str) -> Any:  # models read attributes of their layers (attention_type, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)

    def forward(self, hidden: Tensor, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((hidden, args, kwargs))
        raise _StopForward


def capture_block_inputs(model: nn.Module, layout: ArchLayout, batches: list[Tensor],
                         device: torch.device) -> list[tuple[Tensor, tuple, dict]]:
    """Block 0's (hidden_states, args, kwargs) for every batch, computed on `device`."""
    blocks = model.get_submodule(layout.blocks)
    pre = [model.get_submodule(p) for p in layout.pre_block if _has_submodule(model, p)]
    calls: list[tuple[Tensor, tuple, dict]] = []
    first = blocks[0]
    blocks[0] = _InputCatcher(first, calls)
    for m in pre:
        m.to(device)
    try:
        for batch in batches:
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        blocks[0] = first
        for m in pre:
            m.to("cpu")
    return calls


def _has_submodule(model: nn.Module, name: str) -> bool:
    try:
        return model.get_submodule(name) is not None
    except AttributeError:
        return False


def block_output(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


# -- the job ---------------------------------------------------------------------------------------
def run(spec: QuantizeSpec, ctx: RunContext) -> WorkerOutputs:
    start = time.perf_counter()
    torch.set_num_threads(spec.threads or max(1, int(ctx.cpus)))
    ctx.seed_everything()
    device, dtype = resolve_device(spec.device), DTYPES[spec.dtype]
    model_in = ctx.input("model")
    if quant_format.is_bitsmith_quantized(model_in.path):
        raise DataError(f"inputs.model: {model_in.path} is already quantized; expected an unquantized model")
    model, tokenizer = load_model_and_tokenizer(model_in.path, "cpu", dtype)
    layout = architecture_layout(model)
    plans = plan_layers(model, layout, spec)
    _check_export(spec, plans)
    quantize_fn = method_for(spec.method.type)

    batches: list[Tensor] = []
    if spec.inputs.calibration is not None:
        from .data.datasets import read_texts

        texts = read_texts(ctx.input("calibration").path, spec.calibration.split)
        cal = spec.calibration
        batches = calibration_batches(texts, tokenizer, cal.sequences, cal.seq_len, cal.batch_size, ctx.seed)

    report: list[dict[str, Any]] = []
    packed: dict[str, QuantizedLinear] = {}  # kept on the CPU until the modules are swapped in
    blocks = model.get_submodule(layout.blocks)
    with torch.no_grad():
        calls = capture_block_inputs(model, layout, batches, device) if batches else []
        bar = ctx.progress(total=len(blocks), desc="quantize blocks")
        with bar:
            for k, block in enumerate(blocks):
                block_start = time.perf_counter()
                block.to(device)
                targets = {p.name: model.get_submodule(p.name) for p in plans.values() if p.block == k}
                hessians = collect_hessians(block, targets, calls, device)
                for name, module in targets.items():
                    plan = plans[name]
                    t0 = time.perf_counter()
                    weight = dense_weight(module).detach().float().clone()
                    qw, warnings = quantize_fn(weight, hessians.get(name), spec.method, plan.bits, plan.group_size,
                                               spec.symmetric, spec.mse_clip)
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
                if calls:  # outputs of the quantized block are the next block's inputs
                    calls = [(block_output(block(h, *a, **kw)), a, kw) for h, a, kw in calls]
                block.to("cpu")
                rows = [r for r in report if r["block"] == k]
                errors = [r["rel_error"] for r in rows if r["rel_error"] is not None]
                block_metrics = {"block_seconds": time.perf_counter() - block_start}
                if errors:
                    block_metrics["block_mean_rel_error"] = sum(errors) / len(errors)
                ctx.log_metrics(block_metrics, step=k)
                ctx.log_metrics({f"rel_error/{r['name']}": r["rel_error"] for r in rows if r["rel_error"] is not None},
                                step=k)
                bar.update(1, block=k)

    for name, layer in packed.items():
        quant_format.replace_module(model, name, layer)
    return _write_outputs(spec, ctx, model, plans, report, model_in, time.perf_counter() - start)


def _check_export(spec: QuantizeSpec, plans: dict[str, LayerPlan]) -> None:
    """Refuse up front what the compressed-tensors export cannot represent (before any work)."""
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


def collect_hessians(block: nn.Module, targets: dict[str, nn.Module], calls: list, device: torch.device
                      ) -> dict[str, Tensor]:
    """H = 2 X^T X / n of every target layer's inputs over the calibration batches (forward hooks)."""
    if not calls:
        return {}
    hessians: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    for name, module in targets.items():
        n_in = dense_weight(module).shape[1]
        hessians[name] = torch.zeros(n_in, n_in, dtype=torch.float32, device=device)
        counts[name] = 0

        def hook(mod: nn.Module, inputs: tuple, output: Any, name: str = name) -> None:
            counts[name] = accumulate_hessian(hessians[name], counts[name], inputs[0])
        handles.append(module.register_forward_hook(hook))
    try:
        for hidden, args, kwargs in calls:
            block(hidden, *args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return hessians


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
