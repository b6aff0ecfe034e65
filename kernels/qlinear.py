"""`QuantizedLinear`: a linear layer that stores bit-packed weights and computes with them.

The reference path unpacks and dequantizes the weight, then runs a dense matmul; it runs everywhere.
On a CUDA input, when triton imports and `triton_qlinear.unsupported_reason` finds nothing against it,
the forward pass runs the fused Triton kernel of `triton_qlinear` instead (same dequantized weight,
fp32 accumulation). Triton is never imported on CPU.

Inside `dense_weight_cache(model, max_bytes)` (evaluation, fitness scoring) each layer keeps its dequantized
weight after the first forward, up to `max_bytes` over the model, so later forwards skip the unpacking; the
copy is dropped on exit, and rebuilt if the packed buffers change in between.

`effective_bits_per_weight(modules)` is the one count of stored bits per weight: a quantized layer's codes,
scales, zero points and act-order indices, and the full weight of any layer left in high precision.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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
        self.keep_dense = False  # set by `dense_weight_cache`
        self._dense: tuple[tuple, Tensor] | None = None  # (what it was computed from, the dequantized weight)

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
        weight = self._cached_dense(x.dtype) if self.keep_dense else self.dequantized_weight(dtype=x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return nn.functional.linear(x, weight, bias)

    def _packed_state(self, dtype: torch.dtype) -> tuple:
        """Identifies the packed buffers' current contents: any in-place write bumps a tensor's version."""
        return (dtype,) + tuple((t.data_ptr(), t._version) if t is not None else None
                                for t in (self.qweight, self.scales, self.qzeros, self.g_idx))

    def _cached_dense(self, dtype: torch.dtype) -> Tensor:
        state = self._packed_state(dtype)
        if self._dense is None or self._dense[0] != state:
            self._dense = (state, self.dequantized_weight(dtype=dtype))
        return self._dense[1]

    def dense_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        return self.out_features * self.in_features * torch.tensor([], dtype=dtype).element_size()

    def storage_breakdown(self) -> dict[str, int]:
        """Stored bits of the weight by part: codes, scales, zero points, act-order indices."""
        return {"codes": tensor_bits(self.qweight), "scales": tensor_bits(self.scales),
                "zeros": tensor_bits(self.qzeros), "g_idx": tensor_bits(self.g_idx)}

    def storage_bits(self) -> int:
        """Bits of everything that describes the weight: codes, scales, zeros, act-order indices."""
        return sum(self.storage_breakdown().values())

    def effective_bits_per_weight(self) -> float:
        return self.storage_bits() / (self.in_features * self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, symmetric={self.symmetric}, act_order={self.g_idx is not None}")


@contextmanager
def dense_weight_cache(model: nn.Module, max_bytes: int | None = None,
                       dtype: torch.dtype = torch.float32) -> Iterator[int]:
    """Let the model's `QuantizedLinear`s keep their dequantized weight between forwards (CPU evaluation).

    Layers are enabled in module order while their dense copies (in `dtype`) fit `max_bytes` (None: no
    limit); yields the bytes they may take. The copies are freed on exit. Outputs are unchanged: the cached
    weight is exactly the one the reference path would compute on each forward.
    """
    enabled: list[QuantizedLinear] = []
    used = 0
    for module in model.modules():
        if isinstance(module, QuantizedLinear) and not module.keep_dense:
            size = module.dense_bytes(dtype)
            if max_bytes is not None and used + size > max_bytes:
                continue
            module.keep_dense, used = True, used + size
            enabled.append(module)
    try:
        yield used
    finally:
        for module in enabled:
            module.keep_dense, module._dense = False, None


def weight_storage_bits(module: nn.Module) -> tuple[int, int]:
    """(stored bits, weights) of one layer's weight: packed parts of a `QuantizedLinear`, else the dense weight
    at its dtype (a layer left in high precision). Biases are not weights and not counted."""
    if isinstance(module, QuantizedLinear):
        return module.storage_bits(), module.in_features * module.out_features
    weight = module.weight
    return tensor_bits(weight), weight.numel()


def effective_bits_per_weight(modules: Iterable[nn.Module]) -> float:
    """Stored bits per weight over `modules` (codes + scales + zero points + g_idx, and every weight left
    in high precision at its full width)."""
    counts = [weight_storage_bits(m) for m in modules]
    weights = sum(n for _, n in counts)
    if weights == 0:
        raise ValueError("effective_bits_per_weight: no weights in the given modules")
    return sum(b for b, _ in counts) / weights
