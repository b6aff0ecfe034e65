"""Effective bits per weight against a hand count, and `dense_weight_cache` against the per-forward path."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bitsmith.kernels.qlinear import QuantizedLinear, dense_weight_cache, effective_bits_per_weight
from bitsmith.kernels.quantizers import quantize_rtn


def _layer(out_f: int = 8, in_f: int = 64, bits: int = 3, group: int = 32, symmetric: bool = False,
           seed: int = 0) -> QuantizedLinear:
    w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed))
    return QuantizedLinear.from_quantized(quantize_rtn(w, bits=bits, group_size=group, symmetric=symmetric))


def test_effective_bits_match_a_hand_count_on_a_tiny_layer() -> None:
    layer = _layer()  # 8 x 64 weights, 3-bit codes, groups of 32, asymmetric
    codes = 8 * (64 * 3 // 32) * 32  # 6 int32 words per row of 64 three-bit codes = 1536 bits
    scales = 8 * 2 * 16  # one fp16 scale per row and group = 256 bits
    zeros = 1 * 2 * 32  # 8 three-bit zero points per group packed into one int32 word, 2 groups = 64 bits
    assert layer.storage_breakdown() == {"codes": codes, "scales": scales, "zeros": zeros, "g_idx": 0}
    assert effective_bits_per_weight([layer]) == (codes + scales + zeros) / 512 == 3.625
    # a layer left in high precision counts at its full width (fp32: 32 bits per weight); biases are not weights
    dense = nn.Linear(64, 8, bias=True)
    assert effective_bits_per_weight([layer, dense]) == (codes + scales + zeros + 512 * 32) / 1024
    symmetric = _layer(symmetric=True)
    assert effective_bits_per_weight([symmetric]) == (codes + scales) / 512  # no zero points stored


def test_the_cached_dense_weight_gives_the_per_forward_outputs_bit_for_bit() -> None:
    model = nn.Sequential(_layer(seed=1), nn.ReLU(), _layer(in_f=8, out_f=64, group=8, seed=2))
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = model(x)
        with dense_weight_cache(model) as used:
            assert used == (8 * 64 + 64 * 8) * 4
            first, second = model(x), model(x)
            assert all(m._dense is not None for m in model if isinstance(m, QuantizedLinear))
        assert torch.equal(plain, first) and torch.equal(plain, second)
    assert all(m._dense is None and not m.keep_dense for m in model if isinstance(m, QuantizedLinear))


def test_the_cache_follows_new_packed_weights_and_respects_its_memory_bound() -> None:
    layer, other = _layer(seed=1), _layer(seed=2)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), dense_weight_cache(layer):
        before = layer(x)
        layer.load_state_dict(other.state_dict())  # in place: the buffers' versions move
        assert torch.equal(layer(x), other(x)) and not torch.equal(before, layer(x))
    model = nn.Sequential(_layer(seed=1), _layer(seed=2))
    with dense_weight_cache(model, max_bytes=8 * 64 * 4) as used:  # room for one layer's fp32 copy
        assert used == 8 * 64 * 4
        assert [m.keep_dense for m in model] == [True, False]


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_the_cache_matches_for_every_width_with_act_order(bits: int) -> None:
    from bitsmith.kernels.gptq import gptq_quantize

    gen = torch.Generator().manual_seed(bits)
    w, x = torch.randn(16, 64, generator=gen), torch.randn(128, 64, generator=gen)
    res = gptq_quantize(w, 2 * x.T @ x / 128, bits=bits, group_size=32, act_order=True)
    layer = QuantizedLinear.from_quantized(res.weight)
    assert layer.g_idx is not None
    with torch.no_grad():
        plain = layer(x)
        with dense_weight_cache(layer):
            assert torch.equal(layer(x), plain)
