"""GPTQ's fused Triton column loop (`triton_gptq`) against the torch loop of `gptq_quantize`: the same codes.

As for the QuantizedLinear kernel, without a GPU the kernel runs in Triton's interpreter (numpy on CPU
tensors), which must be switched on before triton is imported: the `test_interpreted_*` tests run in a
child pytest with TRITON_INTERPRET=1 (`test_interpreter_suite_in_a_subprocess`). Directly:
`TRITON_INTERPRET=1 pytest tests/kernels/test_triton_gptq.py -k interpreted`. The compiled kernel is built
ahead of time for sm_80/sm_90 without a GPU, and run on the device under the `gpu` marker.
"""
import re
import subprocess
import sys

import pytest
import torch
from triton_testing import INTERPRETING, compile_for_cuda, interpreter_only, run_interpreted_suite

from bitsmith.kernels.gptq import accumulate_hessian, gptq_quantize


try:  # a one-line kernel around the rounding helper (at module level: kernels resolve names in globals)
    import triton
    import triton.language as tl

    from bitsmith.kernels.triton_gptq import _round_half_even

    @triton.jit
    def round_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n)
        tl.store(out_ptr + offs, _round_half_even(x), mask=offs < n)
except ImportError:
    round_kernel = None


def test_interpreter_suite_in_a_subprocess():
    run_interpreted_suite(__file__)


def make_problem(rows: int, cols: int, seed: int, dead: int = 0, device: str = "cpu"):
    """A weight and the Hessian of correlated inputs (low rank plus noise); `dead` inputs never fire."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g)
    x = torch.randn(4 * cols, 12, generator=g) @ torch.randn(12, cols, generator=g)
    x += 0.1 * torch.randn(4 * cols, cols, generator=g)
    x[:, :dead] = 0.0
    hessian = torch.zeros(cols, cols)
    accumulate_hessian(hessian, 0, x)
    return weight.to(device), hessian.to(device)


def assert_same_result(fused, reference):
    assert fused.column_loop == "triton" and reference.column_loop == "torch"
    a, b = fused.weight, reference.weight
    assert torch.equal(a.codes, b.codes), f"{int((a.codes != b.codes).sum())} codes differ"
    assert torch.equal(a.scales, b.scales) and a.scales.dtype == b.scales.dtype
    assert torch.equal(a.zeros, b.zeros)
    assert (a.g_idx is None) == (b.g_idx is None) and (a.g_idx is None or torch.equal(a.g_idx, b.g_idx))
    assert fused.damp_percent_used == reference.damp_percent_used and fused.warnings == reference.warnings


CASES = {  # name: (rows, cols, gptq_quantize keyword arguments)
    "groups_inside_batch_3bit": (20, 128, dict(bits=3, group_size=32, block_size=64)),  # 20: a partial row tile
    "group_is_batch_4bit_sym": (16, 128, dict(bits=4, group_size=64, block_size=64, symmetric=True)),
    "groups_span_batches_mse_clip": (16, 128, dict(bits=2, group_size=64, block_size=32, mse_clip=True)),
    "act_order_g_idx_8bit": (16, 192, dict(bits=8, group_size=64, block_size=64, act_order=True)),
    "act_order_static_groups_5bit": (16, 128, dict(bits=5, group_size=32, block_size=64, act_order=True,
                                                   static_groups=True)),
    "per_channel_partial_last_batch_6bit": (16, 200, dict(bits=6, group_size=None, block_size=128)),
    "bf16_scales_dead_inputs": (16, 128, dict(bits=4, group_size=32, block_size=64, scale_dtype=torch.bfloat16)),
    "fp32_scales_block_not_power_of_two": (16, 192, dict(bits=4, group_size=32, block_size=96,
                                                         scale_dtype=torch.float32)),
}


@interpreter_only
@pytest.mark.parametrize("case", list(CASES))
def test_interpreted_fused_column_loop_gives_the_torch_loops_codes(case):
    pytest.importorskip("triton")
    rows, cols, kwargs = CASES[case]
    weight, hessian = make_problem(rows, cols, seed=len(case), dead=3 if "dead" in case else 0)
    reference = gptq_quantize(weight, hessian, backend="torch", **kwargs)
    fused = gptq_quantize(weight, hessian, backend="triton", **kwargs)
    assert_same_result(fused, reference)
    assert int(reference.weight.codes.max()) > 0  # not a degenerate all-zero result


@interpreter_only
def test_interpreted_rounding_is_torch_round_half_to_even():
    pytest.importorskip("triton")
    ties = torch.arange(-8, 8, dtype=torch.float32) + 0.5
    near = torch.tensor([0.49999997, -0.49999997, 0.50000006, 1.4999999, 2.5000002, -2.4999998, 8388607.5,
                         8388609.0, 1e9, -1e9, 0.0, -0.0, 3.0, -3.0])
    x = torch.cat([ties, near, torch.randn(200) * 40])
    out = torch.empty_like(x)
    round_kernel[(1,)](x, out, x.numel(), BLOCK=512)
    assert torch.equal(out, torch.round(x))


def test_unsupported_layers_are_named_and_auto_falls_back():
    pytest.importorskip("triton")
    for cols, kwargs, expected in [
            (192, dict(group_size=64, block_size=96), "block_size 96 is not a multiple of group_size 64"),
            (384, dict(group_size=192, block_size=128), "group_size 192 is not a multiple of block_size 128"),
            (192, dict(group_size=32, block_size=64, mse_clip=True), "mse_clip"),
            (1024, dict(group_size=128, block_size=1024), "block_size 1024 > 512")]:
        weight, hessian = make_problem(8, cols, seed=0)
        with pytest.raises(ValueError, match=expected):
            gptq_quantize(weight, hessian, backend="triton", **kwargs)
        assert gptq_quantize(weight, hessian, backend="auto", **kwargs).column_loop == "torch"
    with pytest.raises(ValueError, match="backend 'cuda' not in"):
        gptq_quantize(weight, hessian, backend="cuda")


def test_cpu_gptq_never_imports_triton():
    code = ("import sys, torch\n"
            "from bitsmith.kernels.gptq import accumulate_hessian, gptq_quantize\n"
            "h = torch.zeros(64, 64); accumulate_hessian(h, 0, torch.randn(256, 64))\n"
            "r = gptq_quantize(torch.randn(8, 64), h, group_size=32)\n"
            "assert r.column_loop == 'torch', r.column_loop\n"
            "assert 'triton' not in sys.modules and 'bitsmith.kernels.triton_gptq' not in sys.modules\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("arch,compute_params,symmetric,scale_kind", [(90, True, False, 1), (90, False, True, 1),
                                                                      (80, True, True, 2)])
def test_kernel_compiles_for_cuda_without_a_gpu(arch, compute_params, symmetric, scale_kind):
    """Ahead-of-time compile to a cubin, and check the PTX keeps torch's rounding: IEEE divisions (div.rn,
    not the approximate div.full) and no contraction of products and sums into FMAs."""
    pytest.importorskip("triton")
    from bitsmith.kernels import triton_gptq

    constexprs = dict(BITS=4, SYMMETRIC=symmetric, COMPUTE_PARAMS=compute_params, SCALE_KIND=scale_kind,
                      BLOCK_R=16, BLOCK_C=128)
    kernel = triton_gptq._gptq_block_kernel
    pointers = {p.name: "i32" if p.name == "gid_ptr" else "fp32" for p in kernel.params if p.name.endswith("_ptr")}
    compiled = compile_for_cuda(kernel, pointers, constexprs, arch, num_warps=4, enable_fp_fusion=False)
    ptx = compiled.asm["ptx"]
    assert "div.rn.f32" in ptx and "div.full" not in ptx and "div.approx" not in ptx
    assert not re.search(r"\bfma\.", ptx)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING, reason="needs CUDA and the compiled kernel")
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_fused_column_loop_on_cuda_gives_the_torch_loops_codes(case):
    rows, cols, kwargs = CASES[case]
    weight, hessian = make_problem(rows * 64, cols * 8, seed=len(case), dead=3 if "dead" in case else 0,
                                   device="cuda")
    reference = gptq_quantize(weight, hessian, backend="torch", **kwargs)
    fused = gptq_quantize(weight, hessian, **kwargs)  # "auto" picks the kernel on CUDA
    assert_same_result(fused, reference)
