"""Calibration for layer-wise quantization: where a model's decoder blocks are, which layers to quantize, and
the block-sequential loop that feeds each block its calibration inputs and collects its layers' Hessians.

Shared by `quantize` (GPTQ's sequential loop) and the level database of `search`: both walk
`sequential_blocks`, which keeps one block's activations in memory at a time and computes block k+1's
inputs by running block k *after* the caller is done with it (so a caller that quantized block k's
layers in place feeds the quantized block's outputs forward, as GPTQ does).
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bitsmith.kernels.gptq import accumulate_hessian
from bitsmith.platform.errors import DataError, SpecError
from bitsmith.platform.specs.quantize import LayerOverride, ModuleSelection

BlockCall = tuple[Tensor, tuple, dict]  # one batch's (hidden_states, args, kwargs) into a decoder block


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


# -- which layers, with which settings -------------------------------------------------------------
@dataclass(frozen=True)
class LayerPlan:
    name: str
    block: int
    bits: int
    group_size: int  # input columns per group (in_features when per-channel)
    in_features: int
    transposed: bool  # GPT-2 Conv1D


def plan_layers(model: nn.Module, layout: ArchLayout, *, bits: int, group_size: int | None,
                modules: ModuleSelection, overrides: Mapping[str, LayerOverride] | None = None
                ) -> dict[str, LayerPlan]:
    """Every linear layer inside the decoder blocks that `modules` selects, with its bits and group size.

    Overrides apply by exact module name first, then by the first key that matches the name in full.
    A group size that does not divide a layer's in_features, or an override key that matches no linear
    layer of the blocks, is a SpecError naming the layer or key."""
    overrides = overrides or {}
    blocks = model.get_submodule(layout.blocks)
    plans: dict[str, LayerPlan] = {}
    unused_overrides = set(overrides)
    for k, block in enumerate(blocks):
        for sub, module in block.named_modules():
            name = f"{layout.blocks}.{k}.{sub}"
            if not _is_linear(module):
                continue
            unused_overrides -= {key for key in unused_overrides if key == name or re.fullmatch(key, name)}
            if not any(re.search(p, name) for p in modules.include):
                continue
            if any(re.search(p, name) for p in modules.exclude):
                continue
            layer_bits, group = bits, group_size
            override = overrides.get(name) or next(
                (o for key, o in overrides.items() if re.fullmatch(key, name)), None)
            where = "group_size"
            if override is not None:
                layer_bits = override.bits if override.bits is not None else layer_bits
                if override.group_size is not None:
                    group, where = (None if override.group_size == -1 else override.group_size), "overrides.group_size"
            in_features = dense_weight(module).shape[1]
            if group is not None and in_features % group:
                raise SpecError(f"{where}: {group} does not divide in_features {in_features} of layer {name}; "
                                f"expected a divisor of {in_features} or null (per-channel)",
                                hint="set overrides for this layer, or choose another group_size")
            plans[name] = LayerPlan(name, k, layer_bits, group or in_features, in_features,
                                    transposed=not isinstance(module, nn.Linear))
    if unused_overrides:
        key = sorted(unused_overrides)[0]
        example = next(iter(plans), f"{layout.blocks}.0.<linear>")
        raise SpecError(f"overrides.{key}: matches no linear layer of the decoder blocks; expected a module "
                        f"name (e.g. {example}) or a regex matching names in full")
    if not plans:
        raise SpecError("modules: the include/exclude patterns select no linear layer; expected at least one")
    return plans


def block_layers(model: nn.Module, plans: Mapping[str, LayerPlan], block_index: int) -> dict[str, nn.Module]:
    """The planned layers of decoder block `block_index`, by module name."""
    return {p.name: model.get_submodule(p.name) for p in plans.values() if p.block == block_index}


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


# -- the block-sequential loop ---------------------------------------------------------------------
@torch.no_grad()
def sequential_blocks(model: nn.Module, layout: ArchLayout, batches: list[Tensor], device: torch.device
                      ) -> Iterator[tuple[int, nn.Module, list[BlockCall]]]:
    """Yield `(block_index, block, inputs)` for every decoder block in order, the block on `device`.

    `inputs` are the block's calibration calls (empty without batches). When the caller resumes the
    generator, the block runs on its inputs to produce the next block's inputs (with whatever weights
    the caller left in it) and goes back to the CPU.
    """
    calls = capture_block_inputs(model, layout, batches, device) if batches else []
    for k, block in enumerate(model.get_submodule(layout.blocks)):
        block.to(device)
        yield k, block, calls
        if calls:
            calls = [(block_output(block(h, *a, **kw)), a, kw) for h, a, kw in calls]
        block.to("cpu")


class _StopForward(Exception):
    """Raised by `_InputCatcher` once block 0's inputs are recorded."""


class _InputCatcher(nn.Module):
    """Stands in for block 0: records its call arguments and stops the forward pass."""

    def __init__(self, block: nn.Module, calls: list[BlockCall]):
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
                         device: torch.device) -> list[BlockCall]:
    """Block 0's (hidden_states, args, kwargs) for every batch, computed on `device`."""
    blocks = model.get_submodule(layout.blocks)
    pre = [model.get_submodule(p) for p in layout.pre_block if _has_submodule(model, p)]
    calls: list[BlockCall] = []
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


def collect_hessians(block: nn.Module, targets: dict[str, nn.Module], calls: list[BlockCall], device: torch.device
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
