"""GPTQ's column loop as one Triton kernel per lazy batch: the inner loop of `gptq.gptq_quantize` off the host.

The published GPTQ implementation spends its time launching kernels: every column of W costs a dozen small
torch ops (quantize, dequantize, error, rank-1 update), so a 4096-column layer is ~50k launches and the GPU
idles between them. But the loop is independent across rows of W: row r's update only ever reads row r and
the shared inverse-Hessian factor. This kernel therefore gives each program a tile of BLOCK_R rows by one
lazy batch of columns, keeps that tile in registers, and runs the whole column loop of the batch inside
the program: group parameters (when a group starts inside the batch), codes, the scaled error, and the
update of the batch's remaining columns. The caller then applies the lazy batch update
W[:, i2:] -= Err @ Hinv[i1:i2, i2:] as one matmul, as before. A 4096-column layer becomes ~32 kernel
launches plus ~32 matmuls.

Results equal the torch loop bit for bit where the arithmetic is the same: every operation is the
reference's own (IEEE division via `div_rn`, round half to even, scales rounded to the stored dtype before
codes are computed) and floating-point contraction into FMAs is switched off at launch, so each product and
sum is rounded exactly where torch rounds it.

This module imports triton at the top: import it only where triton may be used. Under `TRITON_INTERPRET=1`
(set before import) the kernel runs on CPU tensors through Triton's numpy interpreter, which is how the
tests check it without a GPU.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

SCALE_KINDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
MAX_BLOCK_COLS = 512


@triton.jit
def _round_half_even(x):
    """torch.round: nearest integer, ties to even (from floor, exact; libdevice is not interpretable)."""
    f = tl.floor(x)
    frac = x - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    return tl.where((frac > 0.5) | ((frac == 0.5) & odd), f + 1.0, f)


@triton.jit
def _round_to_bfloat16(x):
    """fp32 -> bf16 -> fp32, round to nearest even, for finite x. In integer arithmetic because the
    interpreter's own bf16 conversion rounds ties up and drops the carry into the exponent."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _gptq_block_kernel(
    w_ptr, hinv_ptr, codes_ptr, err_ptr, scales_ptr, zeros_ptr, gid_ptr,
    rows, i1, count, group_size,
    stride_w, stride_h, stride_c, stride_e, stride_s,
    BITS: tl.constexpr, SYMMETRIC: tl.constexpr, COMPUTE_PARAMS: tl.constexpr, SCALE_KIND: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Columns [i1, i1 + count) of rows [pid*BLOCK_R, ...): codes -> codes[:, j], scaled errors -> err[:, j - i1].

    COMPUTE_PARAMS: a group's scale and zero come from its columns' current values when it starts
    (j % group_size == 0; the caller guarantees groups do not leave the batch) and are written to
    scales/zeros[:, j // group_size]. Otherwise column j reads them at group gid[j] of those tables.
    """
    pid = tl.program_id(0)
    r = (pid * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    row_ok = r < rows
    col_ok = c < count
    tile = tl.load(w_ptr + r[:, None] * stride_w + (i1 + c)[None, :], mask=row_ok[:, None] & col_ok[None, :],
                   other=0.0)
    maxq: tl.constexpr = (1 << BITS) - 1
    scale = tl.full([BLOCK_R], 1.0, tl.float32)
    zero = tl.zeros([BLOCK_R], tl.float32)
    for i in range(0, count):
        j = i1 + i
        if COMPUTE_PARAMS:
            if j % group_size == 0:  # `affine_params` of the group's current columns, as in `quantizers`
                in_group = ((c >= i) & (c < i + group_size) & col_ok)[None, :]
                xmin = tl.minimum(tl.min(tl.where(in_group, tile, float("inf")), axis=1), 0.0)
                xmax = tl.maximum(tl.max(tl.where(in_group, tile, float("-inf")), axis=1), 0.0)
                if SYMMETRIC:
                    xmax = tl.maximum(-xmin, xmax)
                    xmin = -xmax
                empty = (xmin == 0.0) & (xmax == 0.0)
                xmin = tl.where(empty, -1.0, xmin)
                xmax = tl.where(empty, 1.0, xmax)
                s = tl.math.div_rn(xmax - xmin, tl.full([BLOCK_R], maxq, tl.float32))
                if SCALE_KIND == 1:
                    s = tl.minimum(s, 65504.0).to(tl.float16, fp_downcast_rounding="rtne").to(tl.float32)
                elif SCALE_KIND == 2:
                    s = _round_to_bfloat16(tl.minimum(s, 3.3895313892515355e38))
                scale = tl.maximum(s, 5.960464477539063e-08)  # 2**-24: a scale never rounds to zero
                if SYMMETRIC:
                    zero = tl.full([BLOCK_R], 1 << (BITS - 1), tl.float32)
                else:
                    zero = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(-xmin, scale)), 0.0), maxq)
                g = j // group_size
                tl.store(scales_ptr + r * stride_s + g, scale, mask=row_ok)
                tl.store(zeros_ptr + r * stride_s + g, zero, mask=row_ok)
        else:
            g = tl.load(gid_ptr + j)
            scale = tl.load(scales_ptr + r * stride_s + g, mask=row_ok, other=1.0)
            zero = tl.load(zeros_ptr + r * stride_s + g, mask=row_ok, other=0.0)
        w = tl.sum(tl.where((c == i)[None, :], tile, 0.0), axis=1)  # column i of the tile
        d = tl.load(hinv_ptr + j * stride_h + j)
        q = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(w, scale)) + zero, 0.0), maxq)
        tl.store(codes_ptr + r * stride_c + j, q, mask=row_ok)
        err = tl.math.div_rn(w - scale * (q - zero), tl.full([BLOCK_R], 0.0, tl.float32) + d)
        tl.store(err_ptr + r * stride_e + i, err, mask=row_ok)
        h = tl.load(hinv_ptr + j * stride_h + i1 + c, mask=(c > i) & col_ok, other=0.0)
        tile = tile - err[:, None] * h[None, :]


def unsupported_reason(numel: int, group_size: int, block_size: int, dynamic_groups: bool,
                       mse_clip: bool, scale_dtype: torch.dtype) -> str | None:
    """Why the fused kernel cannot run the column loop of a `numel`-element layer (None when it can)."""
    if scale_dtype not in SCALE_KINDS:
        return f"scale dtype {scale_dtype} not in {tuple(SCALE_KINDS)}"
    if numel >= 2 ** 31:
        return "the weight has 2**31 elements or more"
    if block_size > MAX_BLOCK_COLS:
        return f"block_size {block_size} > {MAX_BLOCK_COLS} (a program holds its rows of a whole batch in registers)"
    if dynamic_groups:
        if group_size <= block_size:
            if block_size % group_size:
                return f"block_size {block_size} is not a multiple of group_size {group_size}"
            if mse_clip:
                return "mse_clip group parameters inside a lazy batch run in torch only"
        elif group_size % block_size:
            return f"group_size {group_size} is not a multiple of block_size {block_size}"
    return None


def default_launch(block_cols: int) -> dict[str, int]:
    """Rows per program and warps: tiles of about 2048 elements (16 rows x 128 columns in 4 warps compiles
    to 128 registers per thread and no spills; ptxas, sm_90). A starting point, not measured on a GPU yet:
    `benchmarks/gptq_bench.py --sweep` times the others."""
    return dict(block_rows=max(2, 2048 // max(block_cols, 128)), num_warps=4)


def quantize_block(W: Tensor, hinv: Tensor, i1: int, i2: int, codes: Tensor, scales: Tensor, zeros: Tensor,
                   group_of_position: Tensor | None, *, bits: int, symmetric: bool, group_size: int,
                   scale_dtype: torch.dtype, err: Tensor, block_rows: int | None = None,
                   num_warps: int | None = None) -> None:
    """Run GPTQ's column loop over columns [i1, i2) of W (fp32, [rows, cols]) and write the scaled errors
    into `err` [rows, i2 - i1] for the caller's lazy batch update.

    `codes` [rows, cols] fp32 receives the codes; `scales`/`zeros` [rows, n_groups] fp32 hold the group
    parameters. With `group_of_position` None, groups start inside the batch and the kernel computes and
    writes their parameters; otherwise column j reads the parameters of group `group_of_position[j]`,
    which the caller has already filled in. W itself is not written (the batch's columns are done after).
    `block_rows` (rows per program) and `num_warps` default to `default_launch`.
    """
    rows = W.shape[0]
    count = i2 - i1
    block_cols = triton.next_power_of_2(count)
    launch = default_launch(block_cols)
    block_rows = block_rows or launch["block_rows"]
    num_warps = num_warps or launch["num_warps"]
    if count <= 0 or err.shape != (rows, count):
        raise ValueError(f"quantize_block: columns [{i1}, {i2}) and err {tuple(err.shape)} for {rows} rows")
    for name, t in dict(W=W, hinv=hinv, codes=codes, scales=scales, zeros=zeros, err=err).items():
        if t.dtype != torch.float32 or t.stride(-1) != 1:
            raise ValueError(f"quantize_block: {name} must be fp32 with unit column stride")
    compute = group_of_position is None
    gid = group_of_position if not compute else scales  # placeholder, never read (compile-time branch)
    grid = (triton.cdiv(rows, block_rows),)
    _gptq_block_kernel[grid](
        W, hinv, codes, err, scales, zeros, gid,
        rows, i1, count, group_size,
        W.stride(0), hinv.stride(0), codes.stride(0), err.stride(0), scales.stride(0),
        BITS=bits, SYMMETRIC=symmetric, COMPUTE_PARAMS=compute, SCALE_KIND=SCALE_KINDS[scale_dtype],
        BLOCK_R=block_rows, BLOCK_C=block_cols, num_warps=num_warps, enable_fp_fusion=False,
    )
