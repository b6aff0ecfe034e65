"""Hessian-based layer sensitivities: Hutchinson trace estimates and the HAWQ-V2 / Fisher scores.

HAWQ-V2 (Dong et al., 2020) ranks a layer's sensitivity to quantization at width b by
Ω(b) = Tr(H)/n · ||Q_b(W) - W||², the average Hessian eigenvalue times the perturbation size (Sec. 3.2).
Tr(H) is estimated with Hutchinson's method, Tr(H) = E[vᵀ H v] for Rademacher v (Sec. 3.1, Alg. 1),
needing only Hessian-vector products.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def rademacher_like(t: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A tensor of ±1 (equal probability) shaped like `t`."""
    bits = torch.randint(0, 2, t.shape, generator=generator, device="cpu", dtype=torch.int8)
    return (bits.to(device=t.device, dtype=t.dtype) * 2 - 1)


def hutchinson_traces(hvp: Callable[[list[Tensor]], list[Tensor]], shapes_like: Sequence[Tensor],
                      rel_tol: float = 0.05, min_samples: int = 8, max_samples: int = 64,
                      generator: torch.Generator | None = None) -> tuple[list[float], int]:
    """Hutchinson estimates of the traces of the diagonal blocks of a Hessian, one per tensor.

    `hvp(vs)` returns H v restricted to each block, for one probe v = (v_1, ..., v_k) drawn jointly;
    v_iᵀ (H v)_i is an unbiased estimate of Tr(H_ii) (the cross terms vanish in expectation). Sampling
    stops once every block's standard error / |mean| is below `rel_tol` (after `min_samples`), or at
    `max_samples`. Returns (traces, samples used).
    """
    samples: list[list[float]] = [[] for _ in shapes_like]
    n = 0
    while n < max_samples:
        vs = [rademacher_like(t, generator) for t in shapes_like]
        hvs = hvp(vs)
        for i, (v, hv) in enumerate(zip(vs, hvs)):
            samples[i].append(float((v * hv).sum()))
        n += 1
        if n >= max(2, min_samples) and all(_rel_stderr(s) < rel_tol for s in samples):
            break
    return [sum(s) / len(s) for s in samples], n


def _rel_stderr(values: list[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    var = sum((x - mean) ** 2 for x in values) / (n - 1)
    if mean == 0:
        return 0.0 if var == 0 else math.inf
    return math.sqrt(var / n) / abs(mean)


def hawq_sensitivity(trace: float, n_params: int, perturbation_sq_norm: float) -> float:
    """Ω = Tr(H)/n · ||Q(W) - W||² (HAWQ-V2, Eq. 5-6): the mean Hessian eigenvalue times the perturbation."""
    return trace / n_params * perturbation_sq_norm


def input_hessian_trace(input_hessian: Tensor, out_features: int) -> float:
    """Tr of the layer-wise Hessian of ||W X - Ŵ X||² w.r.t. vec(W): I_out ⊗ H_in has trace out · Tr(H_in)."""
    return out_features * float(torch.diagonal(input_hessian).sum())


def fisher_sensitivity(fisher_diagonal: Tensor, weight: Tensor, quantized: Tensor) -> float:
    """½ Σ F_jj ΔW_j²: the second-order Taylor loss change with the empirical Fisher diagonal F ≈ E[g²]
    standing in for the Hessian (the gradient term vanishes at a trained optimum)."""
    delta = quantized.float() - weight.float()
    return 0.5 * float((fisher_diagonal.float() * delta * delta).sum())
