"""The per-layer quantization methods, by the spec's `method` tag (`rtn | gptq`), shared by `quantize` and the
level database of `search`.

Each method takes one layer's dense [out, in] weight and its input Hessian (None without calibration
data) and returns the quantized weight and any numerical warnings; `exact_min` rounds asymmetric scales so
GGUF's Q4_1 stores the same grid (`quantize`'s `layout: gguf`).
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from bitsmith.kernels.gptq import gptq_quantize
from bitsmith.kernels.quantizers import QuantizedWeight, quantize_rtn
from bitsmith.platform.errors import SpecError
from bitsmith.platform.specs.quantize import GPTQMethod, RTNMethod

from .registry import Registry

QuantizeFn = Callable[..., tuple[QuantizedWeight, list[str]]]
METHODS: Registry[QuantizeFn] = Registry("method.type", "quantization method")
register_method, method_for = METHODS.register, METHODS.lookup


@register_method("rtn")
def quantize_layer_rtn(weight: Tensor, hessian: Tensor | None, method: RTNMethod, bits: int, group_size: int,
                       symmetric: bool, mse_clip: bool, exact_min: bool = False) -> tuple[QuantizedWeight, list[str]]:
    return quantize_rtn(weight, bits=bits, group_size=group_size, symmetric=symmetric, mse_clip=mse_clip,
                        exact_min=exact_min), []


@register_method("gptq")
def quantize_layer_gptq(weight: Tensor, hessian: Tensor | None, method: GPTQMethod, bits: int, group_size: int,
                        symmetric: bool, mse_clip: bool, exact_min: bool = False) -> tuple[QuantizedWeight, list[str]]:
    if hessian is None:
        raise SpecError("inputs.calibration: gptq needs calibration inputs; expected a text dataset artifact")
    res = gptq_quantize(weight, hessian, bits=bits, group_size=group_size, symmetric=symmetric, mse_clip=mse_clip,
                        damp_percent=method.damp_percent, block_size=method.block_size,
                        act_order=method.act_order, static_groups=method.static_groups, exact_min=exact_min)
    return res.weight, res.warnings
