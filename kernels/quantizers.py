"""Uniform affine weight quantizers (round-to-nearest) and a per-tensor FP8 (e4m3) weight format.

Conventions, shared by every kernel in this package:
- A weight is a float matrix [out_features, in_features]; quantization groups run along the input
  dimension (`group_size` consecutive columns share one scale and zero point; per-channel is one
  group spanning the whole row).
- Codes are unsigned integers in [0, 2**bits - 1]; a weight is reconstructed as
  `scale * (code - zero)`. Symmetric quantization fixes `zero = 2**(bits-1)` (the midpoint), which is
  the same grid as signed codes in [-2**(bits-1), 2**(bits-1) - 1] with a zero point of 0.
- Scales are rounded to `scale_dtype` (fp16 by default) *before* codes are computed, so the codes are
  optimal for the scale actually stored.
- `exact_min` (asymmetric, for GGUF's Q4_1 `x = d*q + m`, which stores m in fp16): scales are rounded up to
  11 - bits significant bits, so that m = -scale * zero is itself an fp16 value and the GGUF block holds
  exactly the same grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
SCALE_DTYPE = torch.float16
_MIN_SCALE = 2.0 ** -24  # smallest positive fp16 (subnormal); a scale never rounds to zero
FP8_E4M3_MAX = 448.0


@dataclass
class QuantizedWeight:
    """Codes plus quantization parameters of one weight matrix (unpacked; see `packing` for storage).

    `g_idx[j]` is the group of input column j when groups are not contiguous runs of columns
    (GPTQ act-order without static groups); otherwise it is None and column j is in group
    `j // group_size`.
    """

    codes: Tensor  # [out, in] integer codes in [0, 2**bits - 1] (int32)
    scales: Tensor  # [out, n_groups], scale_dtype
    zeros: Tensor  # [out, n_groups] int32; all 2**(bits-1) when symmetric
    bits: int
    group_size: int  # columns per group; == in_features for per-channel
    symmetric: bool
    g_idx: Tensor | None = None  # [in] int32, only for non-contiguous groups

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    def column_groups(self) -> Tensor:
        """The group index of every input column, [in] int64."""
        if self.g_idx is not None:
            return self.g_idx.long()
        return torch.arange(self.codes.shape[1], device=self.codes.device) // self.group_size

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return dequantize_codes(self.codes, self.scales, self.zeros, self.column_groups(), dtype=dtype)


def check_group_size(in_features: int, group_size: int | None) -> int:
    """The effective group size (per-channel -> in_features); raise ValueError if it does not divide."""
    if group_size is None or group_size == -1:
        return in_features
    if group_size <= 0 or in_features % group_size:
        raise ValueError(f"group_size {group_size} does not divide in_features {in_features}")
    return group_size


def affine_params(x: Tensor, bits: int, symmetric: bool, mse_clip: bool = False,
                  scale_dtype: torch.dtype = SCALE_DTYPE, clip_grid: int = 100, clip_max_shrink: float = 0.8,
                  clip_norm: float = 2.4, exact_min: bool = False) -> tuple[Tensor, Tensor]:
    """Scale and zero point of every row of `x` [rows, cols] -> (scale [rows] fp32, zero [rows] fp32).

    The range always includes 0 (as in GPTQ's reference `Quantizer.find_params`). With `mse_clip`, the
    range is shrunk by factors 1, 1 - 1/grid, ... down to 1 - max_shrink and the factor with the lowest
    sum |x - Q(x)|^norm is kept per row (the reference's grid search, norm 2.4).
    """
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits {bits} not supported; expected one of {SUPPORTED_BITS}")
    x = x.float()
    xmin = x.min(dim=1).values.clamp(max=0)
    xmax = x.max(dim=1).values.clamp(min=0)
    if symmetric:
        xmax = torch.maximum(-xmin, xmax)
        xmin = -xmax
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(empty, torch.full_like(xmax, 1.0), xmax)
    scale, zero = _range_to_params(xmin, xmax, bits, symmetric, scale_dtype, exact_min)
    if not mse_clip:
        return scale, zero
    best_err = torch.full_like(xmin, float("inf"))
    for i in range(int(clip_max_shrink * clip_grid)):
        p = 1 - i / clip_grid
        s, z = _range_to_params(p * xmin, p * xmax, bits, symmetric, scale_dtype, exact_min)
        q = quantize_to_codes(x, s[:, None], z[:, None], bits)
        err = (dequantize_affine(q, s[:, None], z[:, None]) - x).abs().pow(clip_norm).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        scale = torch.where(better, s, scale)
        zero = torch.where(better, z, zero)
    return scale, zero


def _range_to_params(xmin: Tensor, xmax: Tensor, bits: int, symmetric: bool,
                     scale_dtype: torch.dtype, exact_min: bool = False) -> tuple[Tensor, Tensor]:
    maxq = 2 ** bits - 1
    finite_max = torch.finfo(scale_dtype).max
    scale = ((xmax - xmin) / maxq).clamp(max=finite_max).to(scale_dtype).float().clamp(min=_MIN_SCALE)
    if exact_min and not symmetric:
        scale = round_scale_for_exact_min(scale, bits)
    if symmetric:
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        zero = torch.round(-xmin / scale).clamp(0, maxq)
    return scale, zero


def round_scale_for_exact_min(scale: Tensor, bits: int) -> Tensor:
    """Round fp16-representable scales up to (11 - bits) significant bits (never below fp16's subnormal step
    times 2**bits): then scale * zero, zero < 2**bits, has at most 11 significant bits and is an fp16 value."""
    _, exponent = torch.frexp(scale)  # scale = mantissa * 2**exponent, mantissa in [0.5, 1)
    top = (exponent - 1).clamp(min=-14)  # fp16's smallest normal exponent: below it the spacing is fixed
    step = torch.ldexp(torch.ones_like(scale), top - 10 + bits)
    return torch.ceil(scale / step) * step


def quantize_to_codes(x: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    """Round-to-nearest codes `clamp(round(x / scale) + zero, 0, 2**bits - 1)` (float tensor of ints)."""
    return torch.clamp(torch.round(x / scale) + zero, 0, 2 ** bits - 1)


def dequantize_affine(codes: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    return scale * (codes - zero)


def dequantize_codes(codes: Tensor, scales: Tensor, zeros: Tensor, column_groups: Tensor,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """W[:, j] = scales[:, g(j)] * (codes[:, j] - zeros[:, g(j)]) for codes [out, in]."""
    s = scales.float().index_select(1, column_groups)
    z = zeros.float().index_select(1, column_groups)
    return (s * (codes.float() - z)).to(dtype)


def quantize_rtn(weight: Tensor, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
                 mse_clip: bool = False, scale_dtype: torch.dtype = SCALE_DTYPE,
                 exact_min: bool = False) -> QuantizedWeight:
    """Round-to-nearest quantization of `weight` [out, in], per group of `group_size` input columns
    (None or -1: one group per output channel)."""
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D [out, in]; got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    g = check_group_size(cols, group_size)
    n_groups = cols // g
    grouped = weight.float().reshape(rows * n_groups, g)
    scale, zero = affine_params(grouped, bits, symmetric, mse_clip=mse_clip, scale_dtype=scale_dtype,
                                exact_min=exact_min)
    codes = quantize_to_codes(grouped, scale[:, None], zero[:, None], bits)
    return QuantizedWeight(
        codes=codes.reshape(rows, cols).to(torch.int32),
        scales=scale.reshape(rows, n_groups).to(scale_dtype),
        zeros=zero.reshape(rows, n_groups).to(torch.int32),
        bits=bits, group_size=g, symmetric=symmetric,
    )


# -- FP8 (e4m3), per-tensor scale ------------------------------------------------------------------
def quantize_fp8_e4m3(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Per-tensor FP8 e4m3 weights: (weight / scale as float8_e4m3fn, scale fp32 scalar),
    scale = max|W| / 448 so the largest magnitude maps to e4m3's largest finite value."""
    amax = weight.detach().abs().max().float()
    scale = (amax / FP8_E4M3_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    scaled = (weight.float() / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    return scaled.to(torch.float8_e4m3fn), scale


def dequantize_fp8_e4m3(weight_fp8: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    return (weight_fp8.float() * scale.float()).to(dtype)
