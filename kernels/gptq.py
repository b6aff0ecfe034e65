"""GPTQ: second-order weight quantization (Frantar et al., 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", Algorithm 1), following its reference code.

The layer-wise problem is argmin_Q ||W X - Q X||^2 with Hessian H = 2 X X^T / n (Eq. 1-2). Columns are
quantized one at a time in a fixed order; after quantizing column q the remaining columns absorb its
error through the inverse Hessian (Eq. 3, the OBS update), which Algorithm 1 computes from the
upper Cholesky factor of H^-1 and applies lazily in blocks of `block_size` columns.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import torch
from torch import Tensor

from .quantizers import (SCALE_DTYPE, QuantizedWeight, affine_params, check_group_size, dequantize_affine,
                         quantize_rtn, quantize_to_codes)

logger = logging.getLogger(__name__)
COLUMN_LOOP_BACKENDS = ("auto", "torch", "triton")
GroupParams = Callable[[Tensor], tuple[Tensor, Tensor]]  # columns [rows, n] -> (scale, zero) per row


@dataclass
class GPTQResult:
    weight: QuantizedWeight
    method_used: str  # "gptq", or "rtn" when the Hessian could not be made positive definite
    damp_percent_used: float | None
    warnings: list[str] = field(default_factory=list)
    column_loop: str = "torch"  # where the column loop ran: "torch" or "triton" (`triton_gptq`); "" for RTN


def accumulate_hessian(hessian: Tensor, n_rows: int, inputs: Tensor) -> int:
    """Fold a batch of layer inputs into the running H = 2 X^T X / n (fp32, in place).

    `inputs` is [..., in_features]; every leading index is one row (token) of X. Returns the new
    row count n. H stays the mean over all rows seen, so batches of any size can be mixed.
    """
    x = inputs.detach().reshape(-1, inputs.shape[-1]).to(device=hessian.device, dtype=torch.float32)
    m = x.shape[0]
    if m == 0:
        return n_rows
    total = n_rows + m
    hessian.mul_(n_rows / total)
    hessian.addmm_(x.t(), x, alpha=2.0 / total)
    return total


def inverse_hessian_cholesky(hessian: Tensor, damp_percent: float) -> Tensor | None:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, or None if H + damping is not
    positive definite. Algorithm 1: "H^-1 <- Cholesky(H^-1)^T" with relative dampening (Sec. 4, step 3).
    """
    h = hessian.clone()
    h.diagonal().add_(damp_percent * torch.mean(torch.diagonal(h)))
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        return None
    hinv = torch.cholesky_inverse(lower)
    upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
    if int(info) != 0 or not bool(torch.isfinite(upper).all()):
        return None
    return upper


def gptq_quantize(weight: Tensor, hessian: Tensor, bits: int = 4, group_size: int | None = 128,
                  symmetric: bool = False, mse_clip: bool = False, damp_percent: float = 0.01,
                  block_size: int = 128, act_order: bool = False, static_groups: bool = False,
                  scale_dtype: torch.dtype = SCALE_DTYPE, max_damp_tries: int = 4,
                  backend: str = "auto", exact_min: bool = False) -> GPTQResult:
    """Quantize `weight` [out, in] with GPTQ given its input Hessian [in, in] (`accumulate_hessian`).

    group_size None/-1 is per-channel. With `act_order`, columns are processed in order of decreasing
    diag(H) ("desc_act"); `static_groups` then fixes every group's parameters up front from the
    unpermuted weight so groups stay contiguous runs of columns (no g_idx needed at inference).
    Otherwise groups follow the processing order and the result carries `g_idx`.

    If H + damping is not positive definite, damping is multiplied by 10 up to `max_damp_tries`
    times, and then RTN is used; each step is recorded in `warnings`.

    `backend` picks where the column loop runs: "auto" uses the fused Triton kernel (`triton_gptq`, one
    launch per lazy batch instead of a dozen per column) on CUDA when triton imports and the layer is
    supported, else torch; "torch" and "triton" force one (see `_fused_kernels`). Both give the same codes.
    `exact_min` rounds scales for GGUF's Q4_1 (`quantizers.round_scale_for_exact_min`); the loop then runs in torch.
    """
    if weight.ndim != 2 or hessian.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"weight [out, in] and hessian [in, in] expected; got {tuple(weight.shape)} "
                         f"and {tuple(hessian.shape)}")
    if backend not in COLUMN_LOOP_BACKENDS:
        raise ValueError(f"backend {backend!r} not in {COLUMN_LOOP_BACKENDS}")
    rows, cols = weight.shape
    g = check_group_size(cols, group_size)
    n_groups = cols // g
    warnings: list[str] = []
    W = weight.detach().to(torch.float32).clone()
    H = hessian.detach().to(device=W.device, dtype=torch.float32).clone()

    # Dead inputs (never active in calibration) carry no information: fix their diagonal so H stays
    # invertible and zero their weights (reference: H[dead, dead] = 1; W[:, dead] = 0).
    dead = torch.diagonal(H) == 0
    if bool(dead.any()):
        H[dead, dead] = 1.0
        W[:, dead] = 0.0

    def params(x: Tensor) -> tuple[Tensor, Tensor]:
        return affine_params(x, bits, symmetric, mse_clip=mse_clip, scale_dtype=scale_dtype, exact_min=exact_min)

    # Static groups (and per-channel, one group per row) take their parameters from the weight as it
    # is before any error feedback, in the original column order.
    static_params: list[tuple[Tensor, Tensor]] = []
    if static_groups or g == cols:
        static_params = [params(W[:, k * g:(k + 1) * g]) for k in range(n_groups)]
    perm = torch.arange(cols, device=W.device)
    if act_order:  # "act-order": largest diag(H) first (reference: desc_act)
        perm = torch.argsort(torch.diagonal(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]

    hinv: Tensor | None = None
    damp = damp_percent
    if not bool(torch.isfinite(H).all()):
        warnings.append("Hessian has non-finite entries")
    else:
        for _ in range(max_damp_tries):
            hinv = inverse_hessian_cholesky(H, damp)
            if hinv is not None:
                break
            warnings.append(f"Hessian not positive definite with damp_percent={damp:g}")
            damp *= 10
    if hinv is None:
        warnings.append("GPTQ fell back to round-to-nearest (RTN) for this layer")
        return GPTQResult(quantize_rtn(weight, bits=bits, group_size=group_size, symmetric=symmetric,
                                       mse_clip=mse_clip, scale_dtype=scale_dtype, exact_min=exact_min),
                          method_used="rtn", damp_percent_used=None, warnings=warnings, column_loop="")

    # Row-major for both loops: the factor may come back column-major, and the lazy updates' matmuls must
    # see the same layout in both (cuBLAS picks its algorithm, so its rounding, by layout as well as shape).
    hinv = hinv.contiguous()
    use_static = bool(static_params)
    static_group_of = perm // g  # static group of the column processed at each position
    codes = torch.zeros_like(W)
    scales = torch.zeros(rows, n_groups, device=W.device)
    zeros = torch.zeros(rows, n_groups, device=W.device)
    for k, (s, z) in enumerate(static_params):
        scales[:, k], zeros[:, k] = s, z
    fused = None if exact_min else _fused_kernels(backend, W, g, block_size, not use_static, mse_clip,
                                                  scale_dtype)
    if fused is None:
        _column_loop_torch(W, hinv, codes, scales, zeros, static_group_of.tolist() if use_static else None,
                           params, g, block_size, bits)
    else:
        _column_loop_fused(fused, W, hinv, codes, scales, zeros, static_group_of if use_static else None,
                           params, g, block_size, bits=bits, symmetric=symmetric, scale_dtype=scale_dtype)

    g_idx = None
    if act_order:
        inv = torch.argsort(perm)
        codes = codes[:, inv]
        if not use_static:
            g_idx = (inv // g).to(torch.int32)  # column c was processed at position inv[c]
    result = QuantizedWeight(codes=codes.to(torch.int32), scales=scales.to(scale_dtype),
                             zeros=zeros.to(torch.int32), bits=bits, group_size=g, symmetric=symmetric,
                             g_idx=g_idx)
    return GPTQResult(result, method_used="gptq", damp_percent_used=damp, warnings=warnings,
                      column_loop="torch" if fused is None else "triton")


def _fused_kernels(backend: str, W: Tensor, g: int, block_size: int, dynamic_groups: bool, mse_clip: bool,
                   scale_dtype: torch.dtype) -> ModuleType | None:
    """The Triton column-loop module when `backend` asks for it and it can run this layer, else None.

    "auto": on CUDA when triton imports and the layer is supported; "torch": never; "triton": always
    (on CPU tensors this needs TRITON_INTERPRET=1), raising ValueError with the reason when unsupported.
    """
    if backend == "torch" or (backend == "auto" and not W.is_cuda):
        return None
    try:
        from . import triton_gptq
    except ImportError as e:
        if backend == "triton":
            raise ValueError(f"backend 'triton' needs triton: {e}") from e
        logger.info("gptq: triton unavailable (%s); the column loop runs in torch", e)
        return None
    reason = triton_gptq.unsupported_reason(W.numel(), g, block_size, dynamic_groups, mse_clip, scale_dtype)
    if reason is not None:
        if backend == "triton":
            raise ValueError(f"backend 'triton' cannot run this layer: {reason}")
        logger.info("gptq: column loop runs in torch (%s)", reason)
        return None
    return triton_gptq


def _column_loop_torch(W: Tensor, hinv: Tensor, codes: Tensor, scales: Tensor, zeros: Tensor,
                       static_group_of: list[int] | None, params: GroupParams, g: int, block_size: int,
                       bits: int) -> None:
    """Algorithm 1's loop in torch ops, column by column inside lazy batches of `block_size` columns."""
    cols = W.shape[1]
    scale = zero = torch.empty(0)
    for i1 in range(0, cols, block_size):  # Alg. 1 "for i = 0, B, 2B, ...": lazy batches of B columns
        i2 = min(i1 + block_size, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = hinv[i1:i2, i1:i2]
        for i in range(count):  # Alg. 1 "for j = i, ..., i + B - 1"
            j = i1 + i
            if static_group_of is not None:
                k = static_group_of[j]
                scale, zero = scales[:, k], zeros[:, k]
            elif j % g == 0:
                # A group's parameters come from its columns' current (error-updated) values. Columns
                # past this block have not yet received this block's lazy update; apply it here so
                # the result equals the unbatched column-by-column algorithm exactly.
                end = j + g
                current = W1[:, i:min(end, i2) - i1]
                if end > i2:
                    rest = W[:, i2:end] - Err1[:, :i] @ hinv[i1:j, i2:end]
                    current = torch.cat([current, rest], dim=1)
                scale, zero = params(current)
                scales[:, j // g] = scale
                zeros[:, j // g] = zero
            w = W1[:, i]
            d = Hinv1[i, i]
            q = quantize_to_codes(w, scale, zero, bits)  # Alg. 1: Q[:, j] <- quant(W[:, j])
            codes[:, j] = q
            err = (w - dequantize_affine(q, scale, zero)) / d  # E[:, j-i] <- (W[:, j] - Q[:, j]) / [H^-1]_jj
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)  # W[:, j:i+B] -= E[:, j-i] H^-1[j, j:i+B]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ hinv[i1:i2, i2:]  # W[:, i+B:] -= E H^-1[i:i+B, i+B:] (the lazy batch update)


def _column_loop_fused(kernels: ModuleType, W: Tensor, hinv: Tensor, codes: Tensor, scales: Tensor,
                       zeros: Tensor, static_group_of: Tensor | None, params: GroupParams, g: int,
                       block_size: int, *, bits: int, symmetric: bool, scale_dtype: torch.dtype) -> None:
    """The same loop with each lazy batch's column loop in one Triton kernel (`triton_gptq`)."""
    rows, cols = W.shape
    if static_group_of is not None:
        group_of_position = static_group_of.to(torch.int32)
    elif g > block_size:  # groups span whole batches (g % block_size == 0): parameters before each group
        group_of_position = (torch.arange(cols, device=W.device) // g).to(torch.int32)
    else:  # groups start inside batches: the kernel computes their parameters
        group_of_position = None
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        if static_group_of is None and g > block_size and i1 % g == 0:
            scales[:, i1 // g], zeros[:, i1 // g] = params(W[:, i1:i1 + g])  # no in-group updates yet
        # A fresh [rows, i2 - i1] error buffer, shaped like the torch loop's, so the lazy update below is
        # the very same matmul call (same shapes and strides, hence the same cuBLAS algorithm and rounding).
        err1 = torch.empty(rows, i2 - i1, device=W.device)
        kernels.quantize_block(W, hinv, i1, i2, codes, scales, zeros, group_of_position, bits=bits,
                               symmetric=symmetric, group_size=g, scale_dtype=scale_dtype, err=err1)
        W[:, i2:] -= err1 @ hinv[i1:i2, i2:]


def output_relative_error(weight: Tensor, dequantized: Tensor, hessian: Tensor) -> float:
    """||(W - W_hat) X||^2 / ||W X||^2 computed as tr(D H D^T) / tr(W H W^T) with H ∝ X^T X."""
    W = weight.detach().float()
    H = hessian.to(W.device, torch.float32)
    D = W - dequantized.to(W.device, torch.float32)
    num = torch.sum((D @ H) * D)
    den = torch.sum((W @ H) * W)
    if float(den) <= 0 or not math.isfinite(float(den)):
        return float("nan")
    return float(num / den)
