"""`QuantizedLinear`: a linear layer that stores bit-packed weights and computes with them.

The reference path unpacks and dequantizes the weight, then runs a dense matmul; it runs everywhere.
On a CUDA input, when triton imports and `triton_qlinear.unsupported_reason` finds nothing against it,
the forward pass runs the fused Triton kernel of `triton_qlinear` instead (same dequantized weight,
fp32 accumulation). Triton is never imported on CPU.
"""
from __future__ import annotations

import functools
import logging
from types import ModuleType

import torch
from torch import Tensor, nn

from .packing import pack_codes, packed_words, tensor_bits, unpack_codes
from .quantizers import QuantizedWeight, dequantize_codes

logger = logging.getLogger(__name__)


@functools.cache
def _triton_kernels() -> ModuleType | None:
    """The Triton kernel module, or None when triton does not import (then the reference path runs)."""
    try:
        from . import triton_qlinear
    except ImportError as e:
        logger.info("QuantizedLinear: triton unavailable (%s); using the torch reference on CUDA", e)
        return None
    return triton_qlinear


class QuantizedLinear(nn.Module):
    """y = x W_hat^T + b with W_hat = scales[:, g] * (codes - zeros[:, g]) held packed.

    Buffers (all saved in the state dict, all plain tensors):
      qweight [out, ceil(in*bits/32)] int32  codes packed along the input dim
      scales  [out, n_groups]          fp16   one per group of `group_size` input columns
      qzeros  [ceil(out*bits/32), n_groups] int32  zero points packed along the output dim
                                       (asymmetric only; the compressed-tensors layout)
      g_idx   [in] int32                      group of each input column (act-order only)
      bias    [out]                           optional
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, symmetric: bool,
                 has_g_idx: bool = False, bias: bool = False, scale_dtype: torch.dtype = torch.float16,
                 bias_dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"group_size {group_size} does not divide in_features {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric
        n_groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, packed_words(in_features, bits),
                                                    dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.ones(out_features, n_groups, dtype=scale_dtype, device=device))
        self.register_buffer("qzeros", None if symmetric else torch.zeros(
            packed_words(out_features, bits), n_groups, dtype=torch.int32, device=device))
        self.register_buffer("g_idx", torch.zeros(in_features, dtype=torch.int32, device=device)
                             if has_g_idx else None)
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: Tensor | None = None) -> "QuantizedLinear":
        out_features, in_features = qw.shape
        layer = cls(in_features, out_features, qw.bits, qw.group_size, qw.symmetric,
                    has_g_idx=qw.g_idx is not None, bias=bias is not None, scale_dtype=qw.scales.dtype,
                    bias_dtype=bias.dtype if bias is not None else torch.float32, device=qw.codes.device)
        layer.qweight.copy_(pack_codes(qw.codes, qw.bits))
        layer.scales.copy_(qw.scales)
        if layer.qzeros is not None:
            layer.qzeros.copy_(pack_codes(qw.zeros.T, qw.bits).T)
        if layer.g_idx is not None:
            layer.g_idx.copy_(qw.g_idx)
        if layer.bias is not None:
            layer.bias.data.copy_(bias.detach())
        return layer

    def n_groups(self) -> int:
        return self.in_features // self.group_size

    def unpacked(self) -> QuantizedWeight:
        codes = unpack_codes(self.qweight, self.bits, self.in_features)
        if self.qzeros is not None:
            zeros = unpack_codes(self.qzeros.T.contiguous(), self.bits, self.out_features).T
        else:
            zeros = torch.full((self.out_features, self.n_groups()), 2 ** (self.bits - 1),
                               dtype=torch.int32, device=self.qweight.device)
        return QuantizedWeight(codes=codes, scales=self.scales, zeros=zeros, bits=self.bits,
                               group_size=self.group_size, symmetric=self.symmetric, g_idx=self.g_idx)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The dense [out, in] weight this layer computes with."""
        qw = self.unpacked()
        return dequantize_codes(qw.codes, qw.scales, qw.zeros, qw.column_groups(), dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda and (kernels := _triton_kernels()) is not None \
                and kernels.unsupported_reason(x, self.qweight, self.bits) is None:
            return kernels.quantized_linear(x, self.qweight, self.scales, self.qzeros, self.g_idx, self.bias,
                                            self.bits, self.group_size)
        weight = self.dequantized_weight(dtype=x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return nn.functional.linear(x, weight, bias)

    def storage_bits(self) -> int:
        """Bits of everything that describes the weight: codes, scales, zeros, act-order indices."""
        return sum(tensor_bits(t) for t in (self.qweight, self.scales, self.qzeros, self.g_idx))

    def effective_bits_per_weight(self) -> float:
        return self.storage_bits() / (self.in_features * self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, symmetric={self.symmetric}, act_order={self.g_idx is not None}")
