"""QuantizedLinear forward time: the fused Triton kernel against the torch reference (dequantize, then matmul).

Same layer, same input, same run, on CUDA only. Llama-7B-shaped layers ([out, in] = 4096x4096 q/k/v/o,
11008x4096 gate/up, 4096x11008 down) at batch sizes 1, 16 and 128 tokens. Each time is the median of
`triton.testing.do_bench` (L2 flushed between repetitions). Beside the reference (`QuantizedLinear`'s
torch path: unpack + dequantize + cuBLAS, every call) the table shows a dense matmul on the already
dequantized weight (what an unquantized layer costs), and the kernel's output is checked against the
reference. Results go to `benchmarks/results/qlinear_bench.json`.

    python benchmarks/qlinear_bench.py                       # 4-bit, group 128, asymmetric, fp16
    python benchmarks/qlinear_bench.py --bits 3 --dtype bf16
    python benchmarks/qlinear_bench.py --sweep               # also try tile configurations (a few minutes)

Needs a CUDA device, triton, and bitsmith importable (`pip install --no-deps --no-build-isolation -e .`).
"""
import argparse
import itertools
import json
import platform
import sys
from pathlib import Path

import torch

from bitsmith.kernels.qlinear import QuantizedLinear
from bitsmith.kernels.quantizers import SUPPORTED_BITS, quantize_rtn

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # [out, in]
BATCH_SIZES = [1, 16, 128]
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# (block_m, block_n, block_k, num_warps, num_stages) tried by --sweep beside the default, for 2/4/8 bits
# each with packed words loaded once per tile and with a word load per code (`words_once`)
SWEEP = [(16, 32, 128, 4, 4), (16, 64, 128, 4, 4), (16, 128, 64, 4, 4), (16, 64, 256, 4, 3),
         (32, 64, 128, 4, 4), (64, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 128, 64, 8, 3),
         (128, 256, 32, 8, 3), (64, 256, 64, 8, 3)]
RESULTS = Path(__file__).resolve().parent / "results" / "qlinear_bench.json"


def reference_forward(layer: QuantizedLinear, x: torch.Tensor) -> torch.Tensor:
    """QuantizedLinear's torch path, whatever the device: unpack, dequantize, then a dense matmul."""
    weight = layer.dequantized_weight(dtype=x.dtype)
    return torch.nn.functional.linear(x, weight, layer.bias.to(x.dtype) if layer.bias is not None else None)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.norm((out.double() - ref.double()).flatten()) / torch.linalg.norm(ref.double().flatten()))


def bench_shape(out_f: int, in_f: int, batch: int, args, do_bench, kernels) -> dict:
    from triton.runtime.errors import OutOfResources

    g = torch.Generator(device="cuda").manual_seed(out_f * 31 + in_f)
    weight = torch.randn(out_f, in_f, device="cuda", generator=g) * 0.02
    layer = QuantizedLinear.from_quantized(quantize_rtn(weight, bits=args.bits, group_size=args.group_size,
                                                        symmetric=args.symmetric))
    x = torch.randn(batch, in_f, device="cuda", generator=g).to(DTYPES[args.dtype])
    dense_weight = layer.dequantized_weight(dtype=x.dtype)

    def kernel(**blocks):
        return kernels.quantized_linear(x, layer.qweight, layer.scales, layer.qzeros, layer.g_idx, layer.bias,
                                        layer.bits, layer.group_size, **blocks)

    with torch.no_grad():
        ref = reference_forward(layer, x)
        err = relative_error(kernel(), ref)
        ref_ms = do_bench(lambda: reference_forward(layer, x), return_mode="median")
        dense_ms = do_bench(lambda: torch.nn.functional.linear(x, dense_weight), return_mode="median")
        blocks = kernels.default_blocks(batch, layer.group_size)
        kernel_ms = do_bench(kernel, return_mode="median")
        best = {"config": blocks, "ms": kernel_ms}
        if args.sweep:
            variants = (True, False) if 32 % args.bits == 0 else (None,)  # words loaded once, or per code
            for (bm, bn, bk, warps, stages), words_once in itertools.product(SWEEP, variants):
                config = dict(block_m=bm, block_n=bn, block_k=bk, num_warps=warps, num_stages=stages,
                              words_once=words_once)
                try:
                    out = kernel(**config)
                except OutOfResources as e:  # too much shared memory or registers for this GPU
                    best.setdefault("out_of_resources", []).append(f"{config}: {e}")
                    continue
                if relative_error(out, ref) > 10 * max(err, 1e-3):
                    raise SystemExit(f"qlinear_bench: config {config} disagrees with the reference")
                ms = do_bench(lambda: kernel(**config), return_mode="median")
                if ms < best["ms"]:
                    best = {"config": config, "ms": ms}
    weight_bytes = layer.storage_bits() // 8
    io_bytes = weight_bytes + (x.numel() + batch * out_f) * x.element_size()
    return {"out_features": out_f, "in_features": in_f, "batch": batch, "kernel_ms": kernel_ms,
            "reference_ms": ref_ms, "dense_matmul_ms": dense_ms, "speedup_vs_reference": ref_ms / kernel_ms,
            "ratio_vs_dense": dense_ms / kernel_ms, "kernel_default_config": blocks,
            "best_ms": best["ms"], "best_config": best["config"], "relative_error_vs_reference": err,
            "sweep_out_of_resources": best.get("out_of_resources", []),
            "kernel_tflops": 2 * batch * out_f * in_f / (kernel_ms * 1e-3) / 1e12,
            "kernel_gb_per_s": io_bytes / (kernel_ms * 1e-3) / 1e9, "weight_bytes": weight_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, choices=SUPPORTED_BITS, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--symmetric", action="store_true")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=BATCH_SIZES)
    parser.add_argument("--sweep", action="store_true", help="also time the tile configurations in SWEEP")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("qlinear_bench: no CUDA device (torch.cuda.is_available() is False); the Triton kernel "
                         "runs on CUDA only: run this on a GPU machine. Nothing was measured or written.")
    try:
        from triton.testing import do_bench

        from bitsmith.kernels import triton_qlinear as kernels
    except ImportError as e:
        raise SystemExit(f"qlinear_bench: triton does not import ({e}); install it (pip install triton)") from e
    import triton

    device = torch.cuda.get_device_name()
    print(f"{device}: {args.bits}-bit, group {args.group_size}, {'symmetric' if args.symmetric else 'asymmetric'}, "
          f"{args.dtype}; median of triton.testing.do_bench", file=sys.stderr)
    header = (f"{'out x in':>13} {'batch':>5} {'triton ms':>10} {'reference ms':>13} {'speedup':>8} "
              f"{'dense ms':>9} {'vs dense':>8} {'GB/s':>7} {'rel err':>8}" + ("  best (config)" if args.sweep else ""))
    print(header)
    rows = []
    for out_f, in_f in SHAPES:
        for batch in args.batch_sizes:
            row = bench_shape(out_f, in_f, batch, args, do_bench, kernels)
            rows.append(row)
            best = f"  {row['best_ms']:.4f} {tuple(row['best_config'].values())}" if args.sweep else ""
            print(f"{out_f:>6}x{in_f:<6} {batch:>5} {row['kernel_ms']:>10.4f} {row['reference_ms']:>13.4f} "
                  f"{row['speedup_vs_reference']:>7.2f}x {row['dense_matmul_ms']:>9.4f} {row['ratio_vs_dense']:>7.2f}x "
                  f"{row['kernel_gb_per_s']:>7.0f} {row['relative_error_vs_reference']:>8.1e}{best}")
    result = {"benchmark": "qlinear_forward", "device": device, "torch": torch.__version__,
              "triton": triton.__version__, "python": platform.python_version(), "bits": args.bits,
              "group_size": args.group_size, "symmetric": args.symmetric, "dtype": args.dtype,
              "timing": "triton.testing.do_bench median, ms", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    tolerance = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 3e-2}[args.dtype]
    if any(r["relative_error_vs_reference"] > tolerance for r in rows):
        raise SystemExit(f"qlinear_bench: the kernel's output differs from the reference by more than {tolerance}")


if __name__ == "__main__":
    main()
