"""The fused Triton kernel of `QuantizedLinear` against its torch reference (dequantize, then matmul).

Without a GPU the kernel runs in Triton's interpreter (numpy on CPU tensors). Triton decorates its own
library functions when it is imported, so TRITON_INTERPRET=1 must be set before that and stay set: the
`test_interpreted_*` tests therefore run in a child pytest that `test_interpreter_suite_in_a_subprocess`
starts with the variable set (in this process they are skipped). To run them directly:
`TRITON_INTERPRET=1 pytest tests/kernels/test_triton_qlinear.py -k interpreted`. They run in fp32 (the
interpreter's `tl.dot` multiplies bf16 operands as their raw uint16 bits, so bf16 is checked on the GPU only).
The compiled kernel is built ahead of time for sm_80/sm_90 (frontend, LLVM and ptxas; no GPU needed)
and, with CUDA, run on the device (`gpu` marker). Everything is skipped when triton is not installed,
except the check that the CPU path never imports it.
"""
import subprocess
import sys

import pytest
import torch
from triton_testing import INTERPRETING, compile_for_cuda, interpreter_only, run_interpreted_suite

from bitsmith.kernels.gptq import accumulate_hessian, gptq_quantize
from bitsmith.kernels.qlinear import QuantizedLinear
from bitsmith.kernels.quantizers import SUPPORTED_BITS, quantize_rtn

torch.set_num_threads(1)
RTOL_FP32 = 1e-5  # ||out - ref|| / ||ref|| in fp32: only the summation order differs


@pytest.fixture(scope="module")
def interpreted():
    """`triton_qlinear` with its kernels running on CPU tensors through Triton's interpreter."""
    pytest.importorskip("triton")
    from bitsmith.kernels import triton_qlinear

    assert type(triton_qlinear._qlinear_kernel).__name__ == "InterpretedFunction"
    return triton_qlinear


def test_interpreter_suite_in_a_subprocess():
    run_interpreted_suite(__file__)


def make_layer(out_features: int, in_features: int, bits: int, group_size: int | None, symmetric: bool,
               bias: bool = True, seed: int = 0, device: str = "cpu") -> QuantizedLinear:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g)
    b = torch.randn(out_features, generator=g) if bias else None
    return QuantizedLinear.from_quantized(quantize_rtn(w, bits=bits, group_size=group_size, symmetric=symmetric),
                                          bias=b).to(device)


def run_kernel(kernels, layer: QuantizedLinear, x: torch.Tensor, **blocks) -> torch.Tensor:
    """The kernel's output for x [..., in], written into an output poisoned with NaN (unwritten elements show)."""
    out = torch.full((x.numel() // x.shape[-1], layer.out_features), float("nan"), dtype=x.dtype, device=x.device)
    result = kernels.quantized_linear(x, layer.qweight, layer.scales, layer.qzeros, layer.g_idx, layer.bias,
                                      layer.bits, layer.group_size, out=out, **blocks)
    assert result.data_ptr() == out.data_ptr() and result.shape == (*x.shape[:-1], layer.out_features)
    return result


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not out.isnan().any(), "unwritten (NaN) output elements"
    return float(torch.linalg.norm((out.double() - ref.double()).flatten()) / torch.linalg.norm(ref.double().flatten()))


# (batch, out, in, group_size): sizes that are not multiples of the blocks, per-channel, several K tiles
SHAPES = [(5, 40, 96, 32), (1, 70, 96, None), (33, 130, 256, 128), (17, 24, 64, 16)]


@interpreter_only
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_interpreted_kernel_matches_reference(interpreted, bits, symmetric):
    for i, (m, n, k, group) in enumerate(SHAPES[:2] if symmetric else SHAPES[2:]):
        layer = make_layer(n, k, bits, group, symmetric, seed=100 * bits + i)
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(i))
        assert relative_error(run_kernel(interpreted, layer, x), layer(x)) < RTOL_FP32, (m, n, k, group)


@interpreter_only
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_interpreted_per_code_word_loads_for_whole_word_bit_widths(interpreted, bits):
    for i, (m, n, k, group) in enumerate(SHAPES[1:3]):
        layer = make_layer(n, k, bits, group, symmetric=bool(i), seed=bits + i)
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(i))
        out = run_kernel(interpreted, layer, x, words_once=False)
        assert relative_error(out, layer(x)) < RTOL_FP32, (m, n, k, group)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@interpreter_only
def test_interpreted_identity_input_reads_back_the_dequantized_weight_exactly(interpreted, bits):
    layer = make_layer(48, 64, bits, 32, symmetric=bits % 2 == 0, bias=False, seed=bits)
    eye = torch.eye(64)
    assert torch.equal(run_kernel(interpreted, layer, eye), layer.dequantized_weight().T)


@pytest.mark.parametrize("bits", [3, 4])
@interpreter_only
def test_interpreted_act_order_indices_and_leading_dims(interpreted, bits):
    g = torch.Generator().manual_seed(bits)
    w, calib = torch.randn(40, 64, generator=g), torch.randn(256, 64, generator=g) * torch.linspace(0.1, 2, 64)
    h = torch.zeros(64, 64)
    accumulate_hessian(h, 0, calib)
    layer = QuantizedLinear.from_quantized(gptq_quantize(w, h, bits=bits, group_size=16, act_order=True).weight)
    assert layer.g_idx is not None
    x = torch.randn(2, 3, 64, generator=g)
    assert relative_error(run_kernel(interpreted, layer, x), layer(x)) < RTOL_FP32


@pytest.mark.parametrize("bits", [2, 5])
@interpreter_only
def test_interpreted_small_tiles_many_programs_and_groups_inside_a_tile(interpreted, bits):
    # 10 row tiles (more than one program group of GROUP_M), 3 column tiles, 4 groups inside each K tile
    layer = make_layer(40, 64, bits, 16, symmetric=False, seed=bits)
    x = torch.randn(150, 64, generator=torch.Generator().manual_seed(1))
    out = run_kernel(interpreted, layer, x, block_m=16, block_n=16, block_k=64)
    assert relative_error(out, layer(x)) < RTOL_FP32


@interpreter_only
@pytest.mark.parametrize("bits", [3, 4])
def test_interpreted_last_k_tile_reaching_past_in_features(interpreted, bits):
    # K = 96 with BLOCK_K = 64: the second K tile covers columns 64..127, two groups of 32 inside it
    layer = make_layer(40, 96, bits, 32, symmetric=False, seed=bits)
    x = torch.randn(5, 96, generator=torch.Generator().manual_seed(2))
    assert relative_error(run_kernel(interpreted, layer, x, block_k=64), layer(x)) < RTOL_FP32


def test_unsupported_inputs_are_named():
    pytest.importorskip("triton")
    from bitsmith.kernels import triton_qlinear as kernels

    layer = make_layer(8, 32, 4, 32, symmetric=True)
    assert kernels.unsupported_reason(torch.randn(2, 32), layer.qweight, 4) is None
    assert "dtype" in kernels.unsupported_reason(torch.randn(2, 32, dtype=torch.float64), layer.qweight, 4)
    assert "grad" in kernels.unsupported_reason(torch.randn(2, 32, requires_grad=True), layer.qweight, 4)
    with torch.no_grad():
        assert kernels.unsupported_reason(torch.randn(2, 32, requires_grad=True), layer.qweight, 4) is None
    with pytest.raises(ValueError, match="in_features"):
        kernels.quantized_linear(torch.randn(2, 64), layer.qweight, layer.scales, None, None, None, 4, 32)


def test_cpu_forward_never_imports_triton_and_works_without_it():
    code = (
        "import sys, torch\n"
        "from bitsmith.kernels import qlinear, quantizers\n"
        "weight = quantizers.quantize_rtn(torch.randn(8, 32), bits=4, group_size=32)\n"
        "layer = qlinear.QuantizedLinear.from_quantized(weight)\n"
        "y = layer(torch.randn(3, 32))\n"
        "assert 'triton' not in sys.modules, 'triton imported on the CPU path'\n"
        "sys.modules['triton'] = None  # as if triton were not installed\n"
        "assert qlinear._triton_kernels() is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("arch,bits,symmetric,act_order,dtype", [
    (90, 3, False, False, "fp16"),   # straddling codes, packed zero points, one group per K tile, bias
    (80, 4, True, True, "bf16"),     # act-order: a group per input column; words loaded once, split in registers
    (90, 8, False, False, "fp32"),   # IEEE fp32 dot products
])
def test_kernel_compiles_for_cuda_without_a_gpu(arch, bits, symmetric, act_order, dtype):
    """Ahead-of-time compile to a cubin: catches what only the compiler (not the interpreter) rejects."""
    pytest.importorskip("triton")
    from bitsmith.kernels import triton_qlinear

    pointers = {"x_ptr": dtype, "scales_ptr": "fp16", "bias_ptr": "fp32", "out_ptr": dtype,
                "qweight_ptr": "i32", "qzeros_ptr": "i32", "g_idx_ptr": "i32"}
    constexprs = dict(BITS=bits, SYMMETRIC=symmetric, HAS_G_IDX=act_order, HAS_BIAS=not act_order,
                      ONE_GROUP_PER_BLOCK=not act_order, WORDS_ONCE=32 % bits == 0,
                      CODES_PER_WORD=32 // bits, DOT_PRECISION="ieee" if dtype == "fp32" else None,
                      BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_SIZE_M=8)
    compile_for_cuda(triton_qlinear._qlinear_kernel, pointers, constexprs, arch, num_warps=4, num_stages=3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETING, reason="needs CUDA and the compiled kernel")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_compiled_kernel_on_cuda_matches_reference(bits, dtype):
    from bitsmith.kernels import qlinear, triton_qlinear

    assert qlinear._triton_kernels() is triton_qlinear
    eps = torch.finfo(dtype).eps
    for i, (m, n, k, group, symmetric) in enumerate([(1, 4096, 1024, 128, False), (16, 1000, 512, 64, True),
                                                     (77, 130, 256, 32, False), (300, 512, 4096, None, True)]):
        layer = make_layer(n, k, bits, group, symmetric, seed=10 * bits + i, device="cuda")
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(i)).to("cuda", dtype)
        assert triton_qlinear.unsupported_reason(x, layer.qweight, bits) is None
        out = run_kernel(triton_qlinear, layer, x)
        assert torch.equal(layer(x), out)  # the layer's CUDA forward is this kernel
        weight = layer.dequantized_weight(dtype)  # the reference's rounded weight and bias, summed exactly
        exact = x.double() @ weight.double().T + layer.bias.to(dtype).double()
        reference = torch.nn.functional.linear(x, weight, layer.bias.to(dtype))  # cuBLAS on the same inputs
        kernel_err, reference_err = relative_error(out, exact), relative_error(reference, exact)
        assert kernel_err <= 2 * reference_err + eps / 4, (m, n, k, group, kernel_err, reference_err)
    eye = torch.eye(256, device="cuda", dtype=dtype)  # one-hot rows: the weight itself, exactly
    layer = make_layer(96, 256, bits, 64, symmetric=False, bias=False, seed=bits, device="cuda")
    assert torch.equal(run_kernel(triton_qlinear, layer, eye), layer.dequantized_weight(dtype).T)
