"""GPTQ against round-to-nearest on the same layer and inputs, and its edge cases."""
import pytest
import torch

from bitsmith.kernels.gptq import accumulate_hessian, gptq_quantize, output_relative_error
from bitsmith.kernels.quantizers import quantize_rtn

torch.set_num_threads(1)


def _layer_and_inputs(rows=96, cols=256, tokens=2048, seed=0):
    """A weight and correlated inputs (low-rank mixing plus noise, uneven channel scales)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    mix = torch.randn(32, cols, generator=g)
    x = torch.randn(tokens, 32, generator=g) @ mix + 0.1 * torch.randn(tokens, cols, generator=g)
    x = x * torch.linspace(0.2, 3.0, cols)
    return w, x


def _hessian(x, batches=4):
    h = torch.zeros(x.shape[1], x.shape[1])
    n = 0
    for chunk in x.chunk(batches):
        n = accumulate_hessian(h, n, chunk.reshape(2, -1, x.shape[1]))
    return h, n


def test_hessian_is_two_xtx_over_n():
    _, x = _layer_and_inputs(tokens=320)
    h, n = _hessian(x)
    assert n == 320
    torch.testing.assert_close(h, 2 * x.T @ x / 320, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bits,group_size,symmetric,act_order,static_groups", [
    (4, 128, False, False, False),
    (3, None, True, False, False),
    (4, 32, False, True, False),
    (4, 64, True, True, True),
    (2, 32, False, True, True),
])
def test_gptq_output_error_below_rtn(bits, group_size, symmetric, act_order, static_groups):
    w, x = _layer_and_inputs()
    h, _ = _hessian(x)
    res = gptq_quantize(w, h, bits=bits, group_size=group_size, symmetric=symmetric,
                        act_order=act_order, static_groups=static_groups)
    rtn = quantize_rtn(w, bits=bits, group_size=group_size, symmetric=symmetric)
    assert res.method_used == "gptq" and not res.warnings
    err_gptq = output_relative_error(w, res.weight.dequantize(), h)
    err_rtn = output_relative_error(w, rtn.dequantize(), h)
    assert err_gptq < 0.8 * err_rtn, (err_gptq, err_rtn)
    # the Hessian form equals the direct definition on the calibration inputs
    direct = float(((x @ (w - res.weight.dequantize()).T) ** 2).sum() / ((x @ w.T) ** 2).sum())
    assert err_gptq == pytest.approx(direct, rel=1e-3)
    assert (res.weight.g_idx is not None) == (act_order and not static_groups and group_size is not None)


@pytest.mark.parametrize("group_size,act_order", [(32, False), (96, False), (192, True), (32, True)])
def test_lazy_batches_equal_column_by_column(group_size, act_order):
    """Algorithm 1's lazy block updates only reorder the arithmetic (block_size=1 is unbatched)."""
    w, x = _layer_and_inputs(rows=32, cols=384)
    h, _ = _hessian(x)
    kw = dict(bits=4, group_size=group_size, act_order=act_order)
    batched = gptq_quantize(w, h, block_size=128, **kw).weight
    unbatched = gptq_quantize(w, h, block_size=1, **kw).weight
    differ = (batched.codes != unbatched.codes).float().mean()
    assert differ < 1e-3  # only float-rounding ties may flip
    torch.testing.assert_close(batched.scales.float(), unbatched.scales.float(), rtol=1e-2, atol=1e-4)


def test_dead_inputs_are_zeroed_and_handled():
    w, x = _layer_and_inputs(rows=16, cols=64, tokens=256)
    x[:, :5] = 0
    h, _ = _hessian(x)
    res = gptq_quantize(w, h, bits=4, group_size=32)
    assert res.method_used == "gptq"
    assert torch.isfinite(res.weight.dequantize()).all()
    assert torch.equal(res.weight.dequantize()[:, :5], torch.zeros(16, 5))


def test_not_positive_definite_raises_damping_then_falls_back_to_rtn():
    w, _ = _layer_and_inputs(rows=8, cols=64)
    h = -torch.eye(64)  # negative definite: no damping level fixes it
    res = gptq_quantize(w, h, bits=4, group_size=32, damp_percent=0.01, max_damp_tries=3)
    assert res.method_used == "rtn" and res.damp_percent_used is None
    assert len(res.warnings) == 4 and "fell back" in res.warnings[-1]
    assert torch.equal(res.weight.codes, quantize_rtn(w, bits=4, group_size=32).codes)
    # a slightly indefinite H is rescued by more damping
    _, x = _layer_and_inputs(rows=8, cols=64, tokens=512)
    h, _ = _hessian(x)
    h2 = h - 1.05 * 0.01 * torch.diagonal(h).mean() * torch.eye(64) - torch.linalg.eigvalsh(h).min() * torch.eye(64)
    res2 = gptq_quantize(w, h2, bits=4, group_size=32, damp_percent=0.01)
    assert res2.method_used == "gptq" and res2.damp_percent_used == pytest.approx(0.1)
    assert "not positive definite" in res2.warnings[0]
