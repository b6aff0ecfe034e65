"""A fused Triton kernel for `QuantizedLinear`: y = x @ dequant(W_packed).T (+ bias), read from the packed codes.

This module imports triton at the top: import it only where triton may be used (`QuantizedLinear` imports
it lazily, on the first CUDA input). Under `TRITON_INTERPRET=1` (set before this module is imported) the
same kernel runs on CPU tensors through Triton's numpy interpreter, which is how the tests check it
without a GPU.

Layout read by the kernel (written by `QuantizedLinear.from_quantized`, see `packing` and `quantizers`):
  qweight [N, ceil(K*bits/32)] int32: the codes of row n as a little-endian bit stream along the input
          dim; code k starts at bit k*bits, in word (k*bits)//32 at offset (k*bits)%32.
  scales  [N, n_groups] (fp16, bf16 or fp32): group g covers input columns [g*group_size, (g+1)*group_size),
          or the columns j with g_idx[j] == g when act-order indices are present.
  qzeros  [ceil(N*bits/32), n_groups] int32: zero points packed the same way along the *output* dim
          (column g holds the bit stream of zeros[:, g]); None when symmetric (zero = 2**(bits-1)).
  W[n, k] = scale[n, g(k)] * (code[n, k] - zero[n, g(k)]), computed in fp32 as in `dequantize_codes`,
          then rounded to x's dtype before the matmul (bit for bit the reference's dequantized weight).

Bit widths: all of 2, 3, 4, 5, 6 and 8 run in the fused kernel. For 2, 4 and 8 bits a code never leaves
its word: by default each packed word of a tile is loaded once and split into its 32/bits codes in
registers (`words_once`). For 3, 5 and 6 bits a code may straddle two words: every code is read from its
own word, and where it spills the kernel also loads the next word and ORs its low bits in (a compile-time
branch, so 2/4/8 never pay for it). There is no torch fallback inside this module: `unsupported_reason`
says when `QuantizedLinear` should keep its reference path (another dtype or device, autograd through x,
which this kernel does not implement, or tensors beyond the kernel's int32 offsets).

Products are accumulated in fp32 (`tl.dot` with fp32 accumulator); fp32 inputs use IEEE fp32 dot products
(no TF32), like torch's default for fp32 matmuls.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from .packing import packed_words
from .quantizers import SUPPORTED_BITS

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
GROUP_M = 8  # program ordering: blocks of GROUP_M row tiles share weight tiles in L2


@triton.jit
def _unpack(base_ptr, idx, word_stride, mask, BITS: tl.constexpr):
    """Codes number `idx` of a packed little-endian bit stream whose k-th int32 word is at base_ptr + k*word_stride."""
    bit = idx * BITS
    word = bit // 32
    offset = (bit % 32).to(tl.uint32)
    lo = tl.load(base_ptr + word * word_stride, mask=mask, other=0).to(tl.uint32, bitcast=True)
    code = lo >> offset
    if 32 % BITS != 0:  # 3, 5, 6 bits: a code may continue in the next word
        spill = offset + BITS > 32
        hi = tl.load(base_ptr + (word + 1) * word_stride, mask=mask & spill, other=0).to(tl.uint32, bitcast=True)
        code = code | (hi << ((32 - offset) % 32))  # hi == 0 where nothing spills (and the shift stays < 32)
    return (code & ((1 << BITS) - 1)).to(tl.int32)


@triton.jit
def _qlinear_kernel(
    x_ptr, qweight_ptr, scales_ptr, qzeros_ptr, g_idx_ptr, bias_ptr, out_ptr,
    M, N, K, group_size, n_words,
    stride_xm, stride_xk, stride_qn, stride_qw, stride_sn, stride_sg, stride_zw, stride_zg, stride_om, stride_on,
    BITS: tl.constexpr, SYMMETRIC: tl.constexpr, HAS_G_IDX: tl.constexpr, HAS_BIAS: tl.constexpr,
    ONE_GROUP_PER_BLOCK: tl.constexpr, WORDS_ONCE: tl.constexpr, CODES_PER_WORD: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_SIZE_M: tl.constexpr,
):
    # Grouped program order (as in Triton's matmul tutorial) for L2 reuse of weight tiles.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pids_per_group = GROUP_SIZE_M * num_pid_n
    first_pid_m = (pid // pids_per_group) * GROUP_SIZE_M
    group_rows = min(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + (pid % pids_per_group) % group_rows
    pid_n = (pid % pids_per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    w_rows = qweight_ptr + offs_n[None, :] * stride_qn  # [1, BLOCK_N]: one packed row per output column
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        mask_kn = mask_k[:, None] & mask_n[None, :]
        if WORDS_ONCE:  # 2/4/8 bits: load each word once, [BLOCK_K / per_word, BLOCK_N], split in registers
            offs_w = k0 // CODES_PER_WORD + tl.arange(0, BLOCK_K // CODES_PER_WORD)
            words = tl.load(w_rows + offs_w[:, None] * stride_qw, mask=(offs_w < n_words)[:, None] & mask_n[None, :],
                            other=0).to(tl.uint32, bitcast=True)
            shifts = (tl.arange(0, CODES_PER_WORD) * BITS).to(tl.uint32)
            codes = (words[:, None, :] >> shifts[None, :, None]) & ((1 << BITS) - 1)  # code k = word * per + j
            codes = tl.reshape(codes, (BLOCK_K, BLOCK_N)).to(tl.int32)
        else:  # each code from its own word(s): loads repeat within a word (cache hits), any bit width
            codes = _unpack(w_rows, offs_k[:, None], stride_qw, mask_kn, BITS)  # [BLOCK_K, BLOCK_N]
        if ONE_GROUP_PER_BLOCK:  # contiguous groups and BLOCK_K divides group_size: one (scale, zero) per column
            g = k0 // group_size
            scale = tl.load(scales_ptr + offs_n * stride_sn + g * stride_sg, mask=mask_n, other=0.0)[None, :]
            if SYMMETRIC:
                zero = 1 << (BITS - 1)
            else:
                zero = _unpack(qzeros_ptr + g * stride_zg, offs_n, stride_zw, mask_n, BITS)[None, :]
        else:  # a group per input column (act-order indices, or groups smaller than BLOCK_K)
            if HAS_G_IDX:
                g = tl.load(g_idx_ptr + offs_k, mask=mask_k, other=0)[:, None]
            else:
                g = (offs_k // group_size)[:, None]
            scale = tl.load(scales_ptr + offs_n[None, :] * stride_sn + g * stride_sg, mask=mask_kn, other=0.0)
            if SYMMETRIC:
                zero = 1 << (BITS - 1)
            else:
                zero = _unpack(qzeros_ptr + g * stride_zg, offs_n[None, :], stride_zw, mask_kn, BITS)
        # The reference's dequantization: fp32 scale times the exact integer (code - zero), then x's dtype.
        w = scale.to(tl.float32) * (codes - zero).to(tl.float32)
        w = tl.where(mask_kn, w, 0.0).to(x.dtype)
        acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:  # the reference adds bias.to(x.dtype)
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(x_ptr.dtype.element_ty)
        acc += bias.to(tl.float32)[None, :]
    out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def unsupported_reason(x: Tensor, qweight: Tensor, bits: int) -> str | None:
    """Why the fused kernel cannot compute this call (None when it can)."""
    if bits not in SUPPORTED_BITS:
        return f"bits {bits} not in {SUPPORTED_BITS}"
    if x.dtype not in SUPPORTED_DTYPES:
        return f"input dtype {x.dtype} not in {SUPPORTED_DTYPES}"
    if x.device != qweight.device:
        return f"input on {x.device} but weights on {qweight.device}"
    if x.requires_grad and torch.is_grad_enabled():
        return "the kernel has no backward pass and the input requires grad"
    if max(x.numel(), x.numel() // max(x.shape[-1], 1) * qweight.shape[0], qweight.numel()) >= 2 ** 31:
        return "a tensor has 2**31 elements or more (the kernel's offsets are int32)"
    return None


def default_blocks(m: int, group_size: int) -> dict[str, int]:
    """Tile sizes and launch parameters by batch size (a starting point; benchmarks/qlinear_bench.py sweeps)."""
    if m <= 16:
        blocks = dict(block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=4)
    elif m <= 64:
        blocks = dict(block_m=64, block_n=64, block_k=64, num_warps=4, num_stages=4)
    else:
        blocks = dict(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3)
    while blocks["block_k"] > 16 and group_size % blocks["block_k"]:  # prefer one group per K tile
        blocks["block_k"] //= 2
    return blocks


def quantized_linear(x: Tensor, qweight: Tensor, scales: Tensor, qzeros: Tensor | None, g_idx: Tensor | None,
                     bias: Tensor | None, bits: int, group_size: int, out: Tensor | None = None,
                     block_m: int | None = None, block_n: int | None = None, block_k: int | None = None,
                     num_warps: int | None = None, num_stages: int | None = None,
                     words_once: bool | None = None) -> Tensor:
    """x [..., K] @ dequant(qweight, scales, qzeros, g_idx).T + bias -> [..., N] in x's dtype.

    `qzeros` None means symmetric. `out` ([M, N] with M = x.numel() // K, any strides) receives the result
    when given. Block sizes and launch parameters default to `default_blocks`; each must be a power of two,
    blocks at least 16. `words_once` (2/4/8 bits; default True) loads each packed word once per tile and
    splits it in registers; False unpacks every code from its own (repeated) word load, as 3/5/6 bits do.
    """
    reason = unsupported_reason(x, qweight, bits)
    if reason is not None:
        raise ValueError(f"quantized_linear: {reason}")
    n_out, k_in = scales.shape[0], x.shape[-1]
    n_groups = scales.shape[1]
    if qweight.shape != (n_out, packed_words(k_in, bits)) or k_in != group_size * n_groups:
        raise ValueError(f"quantized_linear: qweight {tuple(qweight.shape)} / scales {tuple(scales.shape)} do not "
                         f"fit in_features {k_in} at {bits} bits and group_size {group_size}")
    if qzeros is not None and qzeros.shape != (packed_words(n_out, bits), n_groups):
        raise ValueError(f"quantized_linear: qzeros {tuple(qzeros.shape)}; expected "
                         f"{(packed_words(n_out, bits), n_groups)}")
    x2 = x.reshape(-1, k_in)
    m = x2.shape[0]
    if out is None:
        out = torch.empty(m, n_out, dtype=x.dtype, device=x.device)
    elif out.shape != (m, n_out) or out.dtype != x.dtype:
        raise ValueError(f"quantized_linear: out {tuple(out.shape)} {out.dtype}; expected {(m, n_out)} {x.dtype}")
    if m == 0 or n_out == 0:
        return out.reshape(*x.shape[:-1], n_out)
    blocks = default_blocks(m, group_size)
    for name, value in dict(block_m=block_m, block_n=block_n, block_k=block_k, num_warps=num_warps,
                            num_stages=num_stages).items():
        if value is not None:
            blocks[name] = value
    zeros = qzeros if qzeros is not None else qweight  # placeholders: never read (compile-time branches)
    grid = (triton.cdiv(m, blocks["block_m"]) * triton.cdiv(n_out, blocks["block_n"]),)
    _qlinear_kernel[grid](
        x2, qweight, scales, zeros, g_idx if g_idx is not None else qweight, bias if bias is not None else scales,
        out, m, n_out, k_in, group_size, qweight.shape[1],
        x2.stride(0), x2.stride(1), qweight.stride(0), qweight.stride(1), scales.stride(0), scales.stride(1),
        zeros.stride(0), zeros.stride(1), out.stride(0), out.stride(1),
        BITS=bits, SYMMETRIC=qzeros is None, HAS_G_IDX=g_idx is not None, HAS_BIAS=bias is not None,
        ONE_GROUP_PER_BLOCK=g_idx is None and group_size % blocks["block_k"] == 0,
        WORDS_ONCE=32 % bits == 0 and (words_once if words_once is not None else True), CODES_PER_WORD=32 // bits,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else None,
        BLOCK_M=blocks["block_m"], BLOCK_N=blocks["block_n"], BLOCK_K=blocks["block_k"], GROUP_SIZE_M=GROUP_M,
        num_warps=blocks["num_warps"], num_stages=blocks["num_stages"],
    )
    return out.reshape(*x.shape[:-1], n_out)
