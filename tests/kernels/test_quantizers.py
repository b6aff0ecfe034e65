"""Round-to-nearest affine quantizers and the FP8 weight format."""
import pytest
import torch

from bitsmith.kernels.quantizers import (SUPPORTED_BITS, check_group_size, dequantize_fp8_e4m3,
                                         quantize_fp8_e4m3, quantize_rtn)

torch.set_num_threads(1)


def _weight(rows=64, cols=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * 0.02


def _rel_err(w, w_hat):
    return float(((w - w_hat) ** 2).sum() / (w ** 2).sum())


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [None, 32, 128])
def test_error_shrinks_with_bits_and_8_bit_is_near_exact(symmetric, group_size):
    w = _weight()
    errors = [_rel_err(w, quantize_rtn(w, bits=b, group_size=group_size, symmetric=symmetric).dequantize())
              for b in SUPPORTED_BITS]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-4  # 8 bits: error ~ (1/255)^2 of the range


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_codes_in_range_and_grid_reconstructs(bits):
    w = _weight(rows=16, cols=96)
    qw = quantize_rtn(w, bits=bits, group_size=32, symmetric=False)
    assert qw.codes.min() >= 0 and qw.codes.max() < 2 ** bits
    assert qw.zeros.min() >= 0 and qw.zeros.max() < 2 ** bits
    assert qw.scales.shape == (16, 3) and qw.scales.dtype == torch.float16
    # every reconstructed value lies within half a step of the weight, unless clipped
    step = qw.scales.float().repeat_interleave(32, dim=1)
    assert ((w - qw.dequantize()).abs() <= step / 2 + 1e-7).float().mean() > 0.99


def test_symmetric_uses_midpoint_zero_and_smaller_groups_help():
    w = _weight()
    qw = quantize_rtn(w, bits=4, group_size=64, symmetric=True)
    assert bool((qw.zeros == 8).all())
    e_chan = _rel_err(w, quantize_rtn(w, bits=4, group_size=None).dequantize())
    e_group = _rel_err(w, quantize_rtn(w, bits=4, group_size=32).dequantize())
    assert e_group < e_chan


def test_mse_clip_never_worse_on_heavy_tails():
    torch.manual_seed(1)
    w = torch.distributions.StudentT(2.0).sample((32, 128)) * 0.01
    plain = quantize_rtn(w, bits=3, group_size=None).dequantize()
    clipped = quantize_rtn(w, bits=3, group_size=None, mse_clip=True).dequantize()
    assert _rel_err(w, clipped) <= _rel_err(w, plain)


def test_group_size_must_divide():
    assert check_group_size(256, None) == 256 and check_group_size(256, -1) == 256
    with pytest.raises(ValueError, match="does not divide in_features 100"):
        quantize_rtn(torch.zeros(4, 100), bits=4, group_size=32)


def test_all_zero_rows_quantize_to_zero():
    w = torch.zeros(4, 64)
    assert torch.equal(quantize_rtn(w, bits=3, group_size=32).dequantize(), w)


def test_fp8_e4m3_per_tensor():
    w = _weight()
    w8, scale = quantize_fp8_e4m3(w)
    assert w8.dtype == torch.float8_e4m3fn and scale.ndim == 0
    w_hat = dequantize_fp8_e4m3(w8, scale)
    assert torch.allclose(w_hat.abs().max(), w.abs().max(), rtol=1e-6)
    assert 0 < _rel_err(w, w_hat) < 2e-3  # 3 mantissa bits: relative step 1/16
