"""The level database: every searched linear layer quantized at each candidate width, and models stitched from it.

Built once per (model, calibration data, level settings) and stored as a derived artifact that every
search, sweep and rerun on the same inputs reuses. Layout of the directory::

    levels.json               {"bits", "grid": [[bits, group size], ...], "method", "group_size", "symmetric",
                               "mse_clip", "layers": [{"name", "block", "shape": [out, in], "numel", "transposed",
                                  "bias", "input_trace": Tr(H_in), "levels": [{"bits", "group_size",
                                  "storage_bits", "effective_bits", "rel_error", "weight_sq_error", "act_order"}]}]}
    level-<bits>.safetensors  per layer `<name>.qweight`, `.scales`, `.qzeros`, `.g_idx` (packed codes) at
                              `group_size`; `level-<bits>g<group>.safetensors` (`gc`: per-channel) at each of
                              `group_sizes`
    artifact.json

Levels are the (bits, group size) pairs of `LevelsConfig.grid()`: by width, then by falling group size.

All levels of a layer come from the same input Hessian. Block k's Hessians are taken on the inputs the
unquantized blocks before it produce: at database time the levels of earlier layers are not chosen yet,
so the dense model is the one calibration stream every allocation shares.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from bitsmith.kernels.gptq import output_relative_error
from bitsmith.kernels.qlinear import QuantizedLinear
from bitsmith.platform.digests import write_artifact_meta
from bitsmith.platform.specs.search import LevelsConfig
from bitsmith.workers.calibration import (LayerPlan, architecture_layout, block_layers, collect_hessians,
                                          dense_weight, sequential_blocks)
from bitsmith.workers.quantizers import QuantizeFn, method_for
from bitsmith.workers.tensorfiles import save_tensors

log = logging.getLogger(__name__)
CALIBRATION_SEED = 0  # fixed, so searches with different seeds share one database
LEVELS_FILE = "levels.json"


@dataclass(frozen=True)
class Level:
    bits: int
    storage_bits: int  # codes + scales + zero points (+ g_idx) of the layer
    effective_bits: float
    rel_error: float  # ||(W - Ŵ) X||² / ||W X||² on the calibration inputs
    weight_sq_error: float  # ||W - Ŵ||²
    act_order: bool
    group_size: int | None = None  # input columns per group of this level; None: the layer's group_size

    def label(self) -> str:
        return f"{self.bits}bit" if self.group_size is None else f"{self.bits}bit-g{self.group_size}"


@dataclass(frozen=True)
class LayerLevels:
    name: str
    block: int
    shape: tuple[int, int]  # [out, in]
    transposed: bool
    bias: bool
    group_size: int
    input_trace: float  # Tr(H_in), H_in = 2 X^T X / n
    levels: tuple[Level, ...]

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def level_group_size(self, level: int) -> int:
        return self.levels[level].group_size or self.group_size


@dataclass(frozen=True)
class LevelDB:
    path: Path
    grid: tuple[tuple[int, int | None], ...]  # (bits, configured group size) of each level
    symmetric: bool
    method: dict[str, Any]
    layers: tuple[LayerLevels, ...]
    group_size: int | None = None  # the configured main group size (files without a g<group> suffix)

    @property
    def bits(self) -> tuple[int, ...]:
        """The width of each level (repeated when there are several group sizes)."""
        return tuple(b for b, _ in self.grid)

    @property
    def single_group(self) -> bool:
        return all(g == self.group_size for _, g in self.grid)

    def level_name(self, level: int) -> str:
        """`3bit`, or `3bit-g32` when the database has several group sizes."""
        bits, group = self.grid[level]
        return f"{bits}bit" if self.single_group else f"{bits}bit-g{group or 'c'}"

    def level_index(self, bits: int, group_size: int | None = None) -> int:
        """The level of `bits` at `group_size` (default: the main one); ValueError when there is none."""
        return self.grid.index((bits, self.group_size if group_size is None else group_size))

    def level_file(self, level: int) -> Path:
        return _level_file(self.path, *self.grid[level], self.group_size)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def total_params(self) -> int:
        return sum(layer.numel for layer in self.layers)

    def nominal_bits(self, allocation: list[int]) -> float:
        """Average nominal bits per weight of an allocation (level index per layer)."""
        total = sum(layer.numel * layer.levels[lv].bits for layer, lv in zip(self.layers, allocation))
        return total / self.total_params()

    def storage_bits(self, allocation: list[int]) -> int:
        return sum(layer.levels[lv].storage_bits for layer, lv in zip(self.layers, allocation))

    def effective_bits(self, allocation: list[int]) -> float:
        return self.storage_bits(allocation) / self.total_params()

    def bits_of(self, allocation: list[int]) -> dict[str, int]:
        return {layer.name: layer.levels[lv].bits for layer, lv in zip(self.layers, allocation)}

    def levels_of(self, allocation: list[int]) -> dict[str, dict[str, int]]:
        """Per layer: its bits and (resolved) group size under `allocation`."""
        return {layer.name: {"bits": layer.levels[lv].bits, "group_size": layer.level_group_size(lv)}
                for layer, lv in zip(self.layers, allocation)}


def level_db_key(model_digest: str, calibration_digest: str, cfg: LevelsConfig, modules: dict[str, Any]) -> str:
    """sha256 over the data and settings the database's content depends on.

    The code it depends on is not here: `ctx.cached_artifact` mixes in the builder module's code fingerprint
    (which covers this module and `kernels/gptq.py`).
    """
    payload = {"model": model_digest, "calibration": calibration_digest,
               "split": "calibration", "sample_seed": CALIBRATION_SEED, "levels": cfg.model_dump(mode="json"),
               "modules": modules}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _level_file(directory: Path, bits: int, group: int | None, main_group: int | None) -> Path:
    suffix = "" if group == main_group else f"g{group or 'c'}"
    return directory / f"level-{bits}{suffix}.safetensors"


def write_level_db(directory: Path, cfg: LevelsConfig, layers: list[LayerLevels],
                   packed: dict[tuple[int, int | None], dict[str, Tensor]], meta: dict[str, Any]) -> None:
    """Write `levels.json`, one safetensors file per level, and `artifact.json` into `directory`."""
    for (bits, group), tensors in packed.items():
        save_tensors({k: v.contiguous() for k, v in tensors.items()}, _level_file(directory, bits, group,
                                                                                  cfg.group_size),
                     metadata={"bits": str(bits), "group_size": str(group)})
    doc = {"bits": list(cfg.bits), "grid": [list(p) for p in cfg.grid()], "method": cfg.method.model_dump(mode="json"),
           "group_size": cfg.group_size, "symmetric": cfg.symmetric, "mse_clip": cfg.mse_clip,
           "layers": [{"name": x.name, "block": x.block, "shape": list(x.shape), "numel": x.numel,
                       "transposed": x.transposed, "bias": x.bias, "group_size": x.group_size,
                       "input_trace": x.input_trace, "levels": [vars(lv) for lv in x.levels]} for x in layers]}
    (directory / LEVELS_FILE).write_text(json.dumps(doc, indent=1) + "\n")
    write_artifact_meta(directory, {"kind": "level-db", **meta})


def load_level_db(directory: str | Path) -> LevelDB:
    directory = Path(directory)
    doc = json.loads((directory / LEVELS_FILE).read_text())
    layers = tuple(
        LayerLevels(name=x["name"], block=x["block"], shape=tuple(x["shape"]), transposed=x["transposed"],
                    bias=x["bias"], group_size=x["group_size"], input_trace=x["input_trace"],
                    levels=tuple(Level(**lv) for lv in x["levels"]))
        for x in doc["layers"])
    grid = tuple(tuple(p) for p in doc.get("grid", [[b, doc["group_size"]] for b in doc["bits"]]))
    return LevelDB(path=directory, grid=grid, symmetric=doc["symmetric"], method=doc["method"], layers=layers,
                   group_size=doc["group_size"])


def quantize_levels(name: str, weight: Tensor, hessian: Tensor | None, cfg: LevelsConfig, group_size: int,
                    quantize_fn: QuantizeFn,
                    ) -> tuple[list[Level], dict[tuple[int, int | None], dict[str, Tensor]], list[str]]:
    """One layer at every level of `cfg.grid()` from the same Hessian: (levels, packed buffers per level,
    warnings). `group_size` is the layer's resolved main group size (in_features when per-channel)."""
    levels: list[Level] = []
    packed: dict[tuple[int, int | None], dict[str, Tensor]] = {}
    warnings: list[str] = []
    single = not cfg.group_sizes
    for bits, group in cfg.grid():
        columns = group_size if group == cfg.group_size else (group or weight.shape[1])
        qw, warn = quantize_fn(weight, hessian, cfg.method, bits, columns, cfg.symmetric, cfg.mse_clip)
        warnings += [f"{bits} bits, group {columns}: {w}" for w in warn]
        layer = QuantizedLinear.from_quantized(qw)
        w_hat = qw.dequantize()
        rel = output_relative_error(weight, w_hat, hessian) if hessian is not None else float("nan")
        levels.append(Level(bits=bits, storage_bits=int(layer.storage_bits()),
                            effective_bits=layer.effective_bits_per_weight(),
                            rel_error=rel if math.isfinite(rel) else float(((weight - w_hat) ** 2).sum()
                                                                            / (weight ** 2).sum().clamp(min=1e-30)),
                            weight_sq_error=float(((weight - w_hat) ** 2).sum()), act_order=qw.g_idx is not None,
                            group_size=None if single else columns))
        packed[(bits, group)] = {f"{name}.{k}": v for k, v in layer.state_dict().items()
                                 if v is not None and k != "bias"}
    return levels, packed, warnings


DENSE_CACHE_MAX_BYTES = 2 * 1024 ** 3  # dequantized level weights one `LevelWeights` keeps (least recently used out)


class LevelWeights:
    """Packed level weights read lazily from the database files; dequantized ones are kept (up to
    `max_cache_bytes`, least recently used dropped first) so an allocation's layers are swapped in cheaply."""

    def __init__(self, db: LevelDB, max_cache_bytes: int = DENSE_CACHE_MAX_BYTES):
        self.db = db
        self.max_cache_bytes = max_cache_bytes
        self._cache: OrderedDict[tuple[int, int], Tensor] = OrderedDict()
        self._cached_bytes = 0

    def packed_layer(self, index: int, level: int, bias: Tensor | None = None) -> QuantizedLinear:
        layer, lv = self.db.layers[index], self.db.layers[index].levels[level]
        out_f, in_f = layer.shape
        q = QuantizedLinear(in_f, out_f, lv.bits, layer.level_group_size(level), self.db.symmetric,
                            has_g_idx=lv.act_order, bias=bias is not None,
                            bias_dtype=bias.dtype if bias is not None else torch.float32)
        with safe_open(str(self.db.level_file(level)), framework="pt") as f:
            state = {k: f.get_tensor(f"{layer.name}.{k}") for k in ("qweight", "scales", "qzeros", "g_idx")
                     if f"{layer.name}.{k}" in f.keys()}
        if bias is not None:
            state["bias"] = bias.detach().clone()
        q.load_state_dict(state, strict=True)
        return q

    def dense(self, index: int, level: int) -> Tensor:
        """The dequantized [out, in] weight of one layer at one level (cached)."""
        key = (index, level)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        weight = self.packed_layer(index, level).dequantized_weight(torch.float32)
        size = weight.numel() * weight.element_size()
        while self._cache and self._cached_bytes + size > self.max_cache_bytes:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= dropped.numel() * dropped.element_size()
        if size <= self.max_cache_bytes:
            self._cache[key], self._cached_bytes = weight, self._cached_bytes + size
        return weight


class AllocationModel:
    """A model copy whose searched layers hold the dequantized weights of an allocation.

    `apply(allocation)` swaps in only the layers whose level changed since the last call.
    """

    def __init__(self, model: nn.Module, db: LevelDB):
        self.model = model
        self.db = db
        self.weights = LevelWeights(db)
        self.modules = [model.get_submodule(layer.name) for layer in db.layers]
        self.dense_weights = [m.weight.detach().clone() for m in self.modules]
        self.current: list[int | None] = [None] * len(db.layers)

    @torch.no_grad()
    def apply(self, allocation: list[int] | None) -> nn.Module:
        """Set the allocation's weights (None, or None for one layer: unquantized) and return the model."""
        for i, module in enumerate(self.modules):
            level = None if allocation is None or allocation[i] is None else int(allocation[i])
            if level == self.current[i]:
                continue
            w = self.dense_weights[i] if level is None else self.weights.dense(i, level)
            if level is not None and self.db.layers[i].transposed:
                w = w.T
            module.weight.data.copy_(w.to(module.weight.dtype))
            self.current[i] = level
        return self.model


@torch.no_grad()
def build_level_db(directory: Path, model: nn.Module, plans: dict[str, LayerPlan], batches: list[Tensor],
                   cfg: LevelsConfig, meta: dict[str, Any], progress: Any = None,
                   seconds: dict[str, float] | None = None) -> None:
    """Quantize every planned layer at every width, block by block (one block's activations in memory).

    `plans` come from `calibration.plan_layers`; `batches` are the calibration token batches. Block k's
    inputs are the outputs of the unquantized blocks before it (see the module docstring). `seconds`, if
    given, receives "calibration" (forward passes and Hessians) and "quantize" (the levels themselves).
    """
    quantize_fn = method_for(cfg.method.type)
    device = torch.device("cpu")
    layers: list[LayerLevels] = []
    packed: dict[tuple[int, int | None], dict[str, Tensor]] = {p: {} for p in cfg.grid()}
    started, quantizing = time.perf_counter(), 0.0
    for k, block, calls in sequential_blocks(model, architecture_layout(model), batches, device):
        targets = block_layers(model, plans, k)
        hessians = collect_hessians(block, targets, calls, device)
        for name, module in targets.items():
            plan = plans[name]
            weight = dense_weight(module).detach().float().clone()
            hessian = hessians.get(name)
            t0 = time.perf_counter()
            levels, tensors, warnings = quantize_levels(name, weight, hessian, cfg, plan.group_size, quantize_fn)
            quantizing += time.perf_counter() - t0
            for w in warnings:
                log.warning("%s: %s", name, w)
            for level, t in tensors.items():
                packed[level].update(t)
            trace = float(torch.diagonal(hessian).sum()) if hessian is not None else float(weight.shape[1])
            layers.append(LayerLevels(name=name, block=k, shape=tuple(weight.shape), transposed=plan.transposed,
                                      bias=getattr(module, "bias", None) is not None, group_size=plan.group_size,
                                      input_trace=trace, levels=tuple(levels)))
        hessians.clear()
        if progress is not None:
            progress.update(1, block=k)
    if seconds is not None:
        seconds.update(calibration=time.perf_counter() - started - quantizing, quantize=quantizing)
    write_level_db(directory, cfg, layers, packed, meta)
