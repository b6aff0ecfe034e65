"""GPTQ time per layer: bitsmith's lazy-batch `gptq_quantize` against a plain column-by-column GPTQ.

Same weight, same Hessian, same run. Small shapes on CPU; Llama-7B shapes (4096x4096, 11008x4096,
4096x11008 as [out, in]) on CUDA only. Results must agree (codes may differ only where float rounding
breaks a tie); the table and `benchmarks/results/gptq_bench.json` give the speed ratio.

    python benchmarks/gptq_bench.py                 # CPU shapes (and the 7B shapes if CUDA is present)
    python benchmarks/gptq_bench.py --device cuda   # 7B shapes only
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
    fast, fast_s = timed(lambda: gptq_quantize(weight, hessian, bits=bits, group_size=group_size,
                                               symmetric=symmetric, damp_percent=damp_percent,
                                               block_size=block_size).weight, device, repeats)
    ref_codes, ref_s = timed(lambda: gptq_column_by_column(weight, hessian, bits, group_size, symmetric,
                                                           damp_percent), device, repeats)
    differ = fast.codes.float() != ref_codes
    return {"out_features": out_features, "in_features": in_features, "bits": bits, "group_size": group_size,
            "repeats": repeats, "lazy_batch_s": fast_s, "column_by_column_s": ref_s, "speedup": ref_s / fast_s,
            "codes_differing_fraction": float(differ.float().mean()),
            "max_abs_code_diff": float((fast.codes.float() - ref_codes).abs().max()),
            "identical": bool(differ.float().mean() <= 1e-3)}


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
            print(f"{row['device']:>10} {out_f:>6}x{in_f:<6} lazy-batch {row['lazy_batch_s']:8.3f} s   "
                  f"column-by-column {row['column_by_column_s']:8.3f} s   speedup {row['speedup']:5.2f}x   "
                  f"codes differing {row['codes_differing_fraction']:.2e} (max |diff| {row['max_abs_code_diff']:.0f})")
    result = {"benchmark": "gptq_layer_time", "torch": torch.__version__, "python": platform.python_version(),
              "cpu_threads": args.threads, "bits": args.bits, "group_size": args.group_size,
              "symmetric": args.symmetric, "block_size": args.block_size, "repeats": args.repeats,
              "load_average_1min": _load_average(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not all(r["identical"] for r in rows):
        raise SystemExit("lazy-batch GPTQ and the column-by-column reference disagree beyond float ties")


if __name__ == "__main__":
    main()
