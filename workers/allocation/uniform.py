"""The uniform baseline of a search, built exactly as a `quantize` job with the level settings builds it.

A level database quantizes every layer on the *unquantized* model's inputs (so all allocations share one
calibration stream); a `quantize` job runs GPTQ's sequential loop instead, where block k sees the already
quantized blocks before it, which is usually better. The search's uniform row is the model a user would
actually pick: `uniform_quantize_spec` writes the `quantize` spec (stored in the report, so it can be
resubmitted as is), and `quantize_uniform` runs that job's block loop on it.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from bitsmith.platform.specs.quantize import QuantizeSpec
from bitsmith.platform.specs.search import SearchSpec

from ..calibration import (architecture_layout, block_layers, calibration_batches, collect_hessians, dense_weight,
                           plan_layers, sequential_blocks)
from ..quantizers import method_for
from .levels import CALIBRATION_SEED

log = logging.getLogger(__name__)


def uniform_quantize_spec(spec: SearchSpec, bits: int, group_size: Any = ...) -> QuantizeSpec:
    """The `quantize` job every layer at `bits` (and `group_size`, default the levels' main one) with the
    search's level settings and calibration windows (None: per-channel)."""
    levels = spec.levels
    group_size = levels.group_size if group_size is ... else group_size
    return QuantizeSpec.model_validate({
        "kind": "quantize", "seed": CALIBRATION_SEED,
        "inputs": {"model": spec.inputs.model, "calibration": spec.inputs.calibration},
        "method": levels.method.model_dump(mode="json"), "bits": bits, "group_size": group_size,
        "symmetric": levels.symmetric, "mse_clip": levels.mse_clip,
        "calibration": {"sequences": levels.sequences, "seq_len": levels.seq_len, "split": "calibration",
                        "batch_size": levels.batch_size},
        "modules": spec.modules.model_dump(mode="json"), "compute": {"threads": spec.compute.threads}})


@torch.no_grad()
def quantize_uniform(qspec: QuantizeSpec, model: nn.Module, tokenizer: Any, texts: list[str],
                     progress: Any = None) -> nn.Module:
    """A copy of `model` quantized as the `quantize` job `qspec` quantizes it (GPTQ's sequential loop: each
    block's layers are quantized in place before the block runs to feed the next); its layers hold the
    dequantized weights, which is what that job's `QuantizedLinear`s compute with.

    The loop is `quantize.quantize_blocks`'s (a worker may not import another job's module); a test keeps
    the two bit-identical."""
    model = copy.deepcopy(model)
    layout = architecture_layout(model)
    plans = plan_layers(model, layout, bits=qspec.bits, group_size=qspec.group_size, modules=qspec.modules,
                        overrides=qspec.overrides)
    cal = qspec.calibration
    batches = calibration_batches(texts, tokenizer, cal.sequences, cal.seq_len, cal.batch_size, qspec.seed)
    quantize_fn = method_for(qspec.method.type)
    device = torch.device("cpu")
    for k, block, calls in sequential_blocks(model, layout, batches, device):
        targets = block_layers(model, plans, k)
        hessians = collect_hessians(block, targets, calls, device)
        for name, module in targets.items():
            plan = plans[name]
            weight = dense_weight(module).detach().float().clone()
            qw, warnings = quantize_fn(weight, hessians.get(name), qspec.method, plan.bits, plan.group_size,
                                       qspec.symmetric, qspec.mse_clip, exact_min=qspec.layout == "gguf")
            for w in warnings:
                log.warning("uniform baseline %s: %s", name, w)
            w_hat = qw.dequantize()
            module.weight.data.copy_((w_hat.T if plan.transposed else w_hat).to(module.weight.dtype))
        hessians.clear()
        if progress is not None:
            progress.update(1, block=k)
    return model
