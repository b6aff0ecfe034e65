"""GPTQ time per layer: bitsmith's `gptq_quantize` against a plain column-by-column GPTQ, same run.

Implementations, on the same weight and Hessian:
- column-by-column: the classic loop written out below (no lazy batches), the reference for the ratio;
- lazy-batch torch: `gptq_quantize(backend="torch")`, the loop of GPTQ's published implementation
  (128-column lazy batches, a dozen torch ops per column);
- fused (CUDA only): `gptq_quantize(backend="triton")`, each lazy batch's column loop in one Triton
  kernel (`kernels/triton_gptq.py`).
Small shapes on CPU; Llama-7B shapes (4096x4096, 11008x4096, 4096x11008 as [out, in]) on CUDA only.
The fused codes must equal the torch loop's exactly; both may differ from column-by-column only where
float rounding breaks a tie. The table and `benchmarks/results/gptq_bench.json` give the ratios.

    python benchmarks/gptq_bench.py                 # CPU shapes (and the 7B shapes if CUDA is present)
    python benchmarks/gptq_bench.py --device cuda   # 7B shapes only
    python benchmarks/gptq_bench.py --device cuda --sweep   # also time the kernel's launch parameters
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bitsmith.kernels.gptq import accumulate_hessian, gptq_quantize, inverse_hessian_cholesky
from bitsmith.kernels.quantizers import affine_params, dequantize_affine, quantize_to_codes

CPU_SHAPES = [(256, 256), (512, 512), (1024, 1024), (512, 1408)]
GPU_SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # [out, in]: q/k/v/o, gate/up, down
RESULTS = Path(__file__).resolve().parent / "results" / "gptq_bench.json"


def gptq_column_by_column(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int,
                          symmetric: bool, damp_percent: float) -> torch.Tensor:
    """The classic GPTQ loop, no lazy batching: after each column, update *all* remaining columns
    with the rank-1 OBS correction. Returns integer codes [out, in]."""
    W = weight.float().clone()
    H = hessian.float().clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    U = inverse_hessian_cholesky(H, damp_percent)  # upper Cholesky factor of H^-1
    codes = torch.zeros_like(W)
    scale = zero = None
    for j in range(W.shape[1]):
        if j % group_size == 0:
            scale, zero = affine_params(W[:, j:j + group_size], bits, symmetric)
        q = quantize_to_codes(W[:, j], scale, zero, bits)
        codes[:, j] = q
        err = (W[:, j] - dequantize_affine(q, scale, zero)) / U[j, j]
        W[:, j:] -= err.unsqueeze(1) * U[j, j:].unsqueeze(0)
    return codes


def make_problem(out_features: int, in_features: int, device: torch.device, seed: int = 0):
    """A weight and a Hessian from correlated inputs (low-rank structure plus noise)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=g) * 0.02
    tokens = max(2048, 2 * in_features)
    mix = torch.randn(64, in_features, generator=g)
    x = torch.randn(tokens, 64, generator=g) @ mix + 0.1 * torch.randn(tokens, in_features, generator=g)
    hessian = torch.zeros(in_features, in_features, device=device)
    n = 0
    for chunk in x.to(device).split(1024):
        n = accumulate_hessian(hessian, n, chunk)
    return weight.to(device), hessian


def timed(fn, device: torch.device, repeats: int):
    """(result, best wall time over `repeats` runs): the minimum is the least disturbed by other load."""
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return result, best


def bench_shape(out_features: int, in_features: int, device: torch.device, bits: int, group_size: int,
                symmetric: bool, damp_percent: float, block_size: int, repeats: int = 1) -> dict:
    weight, hessian = make_problem(out_features, in_features, device)

    def run_gptq(backend: str):
        return gptq_quantize(weight, hessian, bits=bits, group_size=group_size, symmetric=symmetric,
                             damp_percent=damp_percent, block_size=block_size, backend=backend)

    lazy, lazy_s = timed(lambda: run_gptq("torch"), device, repeats)
    ref_codes, ref_s = timed(lambda: gptq_column_by_column(weight, hessian, bits, group_size, symmetric,
                                                           damp_percent), device, repeats)
    differ = lazy.weight.codes.float() != ref_codes
    row = {"out_features": out_features, "in_features": in_features, "bits": bits, "group_size": group_size,
           "repeats": repeats, "column_by_column_s": ref_s, "lazy_batch_s": lazy_s, "speedup": ref_s / lazy_s,
           "codes_differing_fraction": float(differ.float().mean()),
           "max_abs_code_diff": float((lazy.weight.codes.float() - ref_codes).abs().max()),
           "identical": bool(differ.float().mean() <= 1e-3)}
    if device.type == "cuda":
        fused, fused_s = timed(lambda: run_gptq("triton"), device, repeats)
        same = all(torch.equal(getattr(fused.weight, k), getattr(lazy.weight, k)) for k in ("codes", "scales", "zeros"))
        row.update(fused_s=fused_s, fused_speedup=ref_s / fused_s, fused_vs_lazy_batch=lazy_s / fused_s,
                   fused_equals_lazy_batch=same, identical=row["identical"] and same)
    return row


def sweep_launch(out_features: int, in_features: int, device: torch.device, bits: int, group_size: int,
                 block_size: int) -> list[dict]:
    """Kernel time of one lazy batch (the first) for each rows-per-program / warps setting (do_bench median)."""
    from triton.testing import do_bench

    from bitsmith.kernels import triton_gptq
    from bitsmith.kernels.gptq import inverse_hessian_cholesky

    weight, hessian = make_problem(out_features, in_features, device)
    hinv = inverse_hessian_cholesky(hessian, 0.01).contiguous()
    n_groups = in_features // group_size
    codes = torch.zeros_like(weight)
    scales = torch.zeros(out_features, n_groups, device=device)
    zeros = torch.zeros_like(scales)
    err = torch.empty(out_features, block_size, device=device)
    rows = []
    for block_rows in (4, 8, 16, 32, 64):
        for num_warps in (1, 2, 4, 8):
            ms = do_bench(lambda: triton_gptq.quantize_block(
                weight, hinv, 0, block_size, codes, scales, zeros, None, bits=bits, symmetric=False,
                group_size=group_size, scale_dtype=torch.float16, err=err, block_rows=block_rows,
                num_warps=num_warps), return_mode="median")
            rows.append({"block_rows": block_rows, "num_warps": num_warps, "batch_ms": ms})
            print(f"  sweep {out_features}x{in_features}: block_rows {block_rows:>3} num_warps {num_warps}  "
                  f"{ms * 1e3:8.1f} us per {block_size}-column batch")
    return rows


def _load_average() -> float | None:
    try:
        import os

        return os.getloadavg()[0]
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--symmetric", action="store_true")
    parser.add_argument("--damp-percent", type=float, default=0.01)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="runs per implementation; the fastest counts")
    parser.add_argument("--sweep", action="store_true", help="CUDA: time the fused kernel's launch parameters")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs: list[tuple[torch.device, list[tuple[int, int]]]] = []
    if args.device in ("auto", "cpu"):
        runs.append((torch.device("cpu"), CPU_SHAPES))
    if args.device in ("auto", "cuda"):
        if torch.cuda.is_available():
            runs.append((torch.device("cuda"), GPU_SHAPES))
        else:
            print("skipping Llama-7B shapes (4096x4096, 11008x4096, 4096x11008): CUDA is not available")
    rows = []
    for device, shapes in runs:
        bench_shape(128, 128, device, args.bits, 32, args.symmetric, args.damp_percent, args.block_size)  # warm-up
        for out_f, in_f in shapes:
            row = bench_shape(out_f, in_f, device, args.bits, args.group_size, args.symmetric, args.damp_percent,
                              args.block_size, args.repeats)
            row["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
            rows.append(row)
            fused = ""
            if "fused_s" in row:
                fused = (f"   fused {row['fused_s']:8.3f} s ({row['fused_speedup']:6.1f}x; "
                         f"{row['fused_vs_lazy_batch']:5.1f}x lazy-batch; codes "
                         f"{'equal' if row['fused_equals_lazy_batch'] else 'DIFFER'})")
            print(f"{row['device'][:24]:>24} {out_f:>6}x{in_f:<6} column-by-column "
                  f"{row['column_by_column_s']:8.3f} s   lazy-batch {row['lazy_batch_s']:8.3f} s "
                  f"({row['speedup']:5.2f}x){fused}   codes differing from column-by-column "
                  f"{row['codes_differing_fraction']:.2e} (max |diff| {row['max_abs_code_diff']:.0f})")
    result = {"benchmark": "gptq_layer_time", "torch": torch.__version__, "python": platform.python_version(),
              "cpu_threads": args.threads, "bits": args.bits, "group_size": args.group_size,
              "symmetric": args.symmetric, "block_size": args.block_size, "repeats": args.repeats,
              "load_average_1min": _load_average(), "rows": rows}
    if args.sweep and torch.cuda.is_available():
        result["launch_sweep"] = sweep_launch(*GPU_SHAPES[0], torch.device("cuda"), args.bits, args.group_size,
                                              args.block_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not all(r["identical"] for r in rows):
        raise SystemExit("GPTQ implementations disagree: fused vs lazy-batch not equal, or either vs the "
                         "column-by-column reference beyond float ties")


if __name__ == "__main__":
    main()
