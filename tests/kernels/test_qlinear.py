"""`QuantizedLinear`: packed storage, forward = dequantized matmul, computed bits per weight."""
import pytest
import torch

from bitsmith.kernels.gptq import accumulate_hessian, gptq_quantize
from bitsmith.kernels.qlinear import QuantizedLinear
from bitsmith.kernels.quantizers import quantize_rtn

torch.set_num_threads(1)


@pytest.mark.parametrize("bits,group,sym", [(2, 32, False), (3, 32, False), (5, None, True), (6, 48, True),
                                            (8, 96, False)])
def test_forward_equals_dequantized_weight_matmul(bits, group, sym):
    g = torch.Generator().manual_seed(bits)
    w, b, x = torch.randn(40, 96, generator=g), torch.randn(40, generator=g), torch.randn(5, 7, 96, generator=g)
    qw = quantize_rtn(w, bits=bits, group_size=group, symmetric=sym)
    layer = QuantizedLinear.from_quantized(qw, bias=b)
    assert torch.equal(layer.dequantized_weight(), qw.dequantize())
    torch.testing.assert_close(layer(x), x @ qw.dequantize().T + b)
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert layer.qzeros is None if sym else layer.qzeros.dtype == torch.int32


def test_state_dict_round_trip_with_act_order_indices():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(24, 64, generator=g), torch.randn(512, 64, generator=g) * torch.linspace(0.1, 2, 64)
    h = torch.zeros(64, 64)
    accumulate_hessian(h, 0, x)
    qw = gptq_quantize(w, h, bits=4, group_size=32, act_order=True).weight
    layer = QuantizedLinear.from_quantized(qw)
    assert layer.g_idx is not None and set(layer.state_dict()) == {"qweight", "scales", "qzeros", "g_idx"}
    fresh = QuantizedLinear(64, 24, bits=4, group_size=32, symmetric=False, has_g_idx=True)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.dequantized_weight(), qw.dequantize())


@pytest.mark.parametrize("bits,group,sym,expected", [
    (4, 128, True, 4 + 16 / 128),                          # codes + fp16 scale per group
    (4, 128, False, 4 + 16 / 128 + 4 / 128),               # + 4-bit zero points, packed along the output dim
    (3, None, False, 3 + 16 / 4096 + 32 / (8 * 4096)),     # per-channel: 8 rows x 3 bits fit in one word
    (2, 32, False, 2 + 16 / 32 + 32 * 128 / (8 * 4096)),   # 8 rows x 2 bits = one word per group
])
def test_effective_bits_are_computed_from_storage(bits, group, sym, expected):
    w = torch.randn(8, 4096)
    layer = QuantizedLinear.from_quantized(quantize_rtn(w, bits=bits, group_size=group, symmetric=sym))
    assert layer.effective_bits_per_weight() == pytest.approx(expected)
