"""Per-layer, per-level sensitivities for the `hessian` method: losses[i][l] of layer i at level l.

- `input_trace`: HAWQ-V2's Ω with the trace of the layer-wise reconstruction Hessian I ⊗ H_in, read
  from the level database (no backward pass).
- `hutchinson`: HAWQ-V2's Ω with Hutchinson estimates of the traces of the loss Hessian's diagonal
  blocks (Hessian-vector products by double backward).
- `fisher`: ½ Σ F ΔW² with the empirical Fisher diagonal F = mean over sequences of g².
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from bitsmith.kernels.hessian import fisher_sensitivity, hawq_sensitivity, hutchinson_traces
from bitsmith.platform.specs.search import HessianMethod

from .levels import LevelDB, LevelWeights

log = logging.getLogger(__name__)
Losses = list[list[float]]


def from_traces(db: LevelDB, traces: list[float]) -> Losses:
    return [[hawq_sensitivity(t, layer.numel, lv.weight_sq_error) for lv in layer.levels]
            for layer, t in zip(db.layers, traces)]


def input_traces(db: LevelDB) -> list[float]:
    """Tr(I_out ⊗ H_in) = out · Tr(H_in) per layer, from the level database."""
    return [layer.shape[0] * layer.input_trace for layer in db.layers]


def _lm_loss(model: nn.Module, batch: Tensor) -> Tensor:
    logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def _weights(model: nn.Module, db: LevelDB) -> list[Tensor]:
    return [model.get_submodule(layer.name).weight for layer in db.layers]


def loss_hessian_traces(model: nn.Module, db: LevelDB, batch: Tensor, method: HessianMethod,
                        seed: int, progress: Any = None) -> tuple[list[float], int]:
    """Hutchinson traces of the LM loss Hessian w.r.t. each searched layer's weights on `batch` (one
    `progress.update` per probe)."""
    params = _weights(model, db)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    try:
        # The math attention kernel has a double backward (the fused CPU/flash kernels do not).
        with sdpa_kernel(SDPBackend.MATH):
            grads = torch.autograd.grad(_lm_loss(model, batch), params, create_graph=True)

            def hvp(vs: list[Tensor]) -> list[Tensor]:
                out = list(torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True))
                if progress is not None:
                    progress.update(1)
                return out

            cfg = method.hutchinson
            traces, samples = hutchinson_traces(hvp, params, rel_tol=cfg.rel_tol, min_samples=cfg.samples_min,
                                                max_samples=cfg.samples_max,
                                                generator=torch.Generator().manual_seed(seed))
    finally:
        for p in params:
            p.requires_grad_(False)
    log.info("hutchinson: %d probes", samples)
    return traces, samples


def fisher_losses(model: nn.Module, db: LevelDB, batch: Tensor, progress: Any = None) -> Losses:
    """½ Σ F ⊙ (Ŵ_l - W)² per layer and level, F = mean over sequences of the squared loss gradient."""
    params = _weights(model, db)
    for p in model.parameters():
        p.requires_grad_(False)
    fisher = [torch.zeros_like(p) for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        for row in batch:  # per-sequence gradients: the empirical Fisher of sequence losses
            grads = torch.autograd.grad(_lm_loss(model, row[None]), params)
            for f, g in zip(fisher, grads):
                f.add_(g.detach() ** 2, alpha=1.0 / batch.shape[0])
            if progress is not None:
                progress.update(1)
    finally:
        for p in params:
            p.requires_grad_(False)
    weights = LevelWeights(db)
    losses: Losses = []
    for i, (layer, f, p) in enumerate(zip(db.layers, fisher, params)):
        dense_w = p.detach().T if layer.transposed else p.detach()
        f_oi = f.T if layer.transposed else f
        losses.append([fisher_sensitivity(f_oi, dense_w, weights.dense(i, lv)) for lv in range(len(layer.levels))])
    return losses


def sensitivities(method: HessianMethod, db: LevelDB, model_loader: Callable[[], nn.Module],
                  batch: Callable[[], Tensor], seed: int, progress: Callable[..., Any] | None = None
                  ) -> tuple[Losses, dict[str, float]]:
    """The losses the knapsack minimises, and details for the report (`progress(total=, desc=)` makes a bar
    for the probes or sequences)."""
    if method.sensitivity == "input_trace":
        return from_traces(db, input_traces(db)), {}
    model = model_loader()
    if method.sensitivity == "hutchinson":
        with _bar(progress, method.hutchinson.samples_max, "hutchinson probes") as bar:
            traces, samples = loss_hessian_traces(model, db, batch(), method, seed, bar)
        return from_traces(db, traces), {"hutchinson_samples": float(samples)}
    with _bar(progress, method.gradient_sequences, "fisher sequences") as bar:
        return fisher_losses(model, db, batch(), bar), {}


@contextmanager
def _bar(progress: Callable[..., Any] | None, total: int, desc: str) -> Iterator[Any]:
    if progress is None:
        yield None
        return
    with progress(total=total, desc=desc) as bar:
        yield bar
