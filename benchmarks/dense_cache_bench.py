"""CPU token-perplexity time of a quantized model with and without `dense_weight_cache`, against the unquantized one.

The quantized model is an RTN `quantize` output (no calibration needed) loaded as `QuantizedLinear`s, the way
an `eval` job loads it. Each configuration is timed `--repeats` times (median reported) on the same chunks of
the dataset's test split, the configurations taking turns; the two quantized perplexities must agree exactly.

    nice -n 15 .venv/bin/python benchmarks/dense_cache_bench.py --model DIR --data DATASET_DIR [--bits 3]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bitsmith.kernels.qlinear import dense_weight_cache
from bitsmith.platform.context import local_context
from bitsmith.platform.specs import parse_spec
from bitsmith.workers import quant_format, quantize
from bitsmith.workers.data.datasets import read_texts
from bitsmith.workers.evaluators.perplexity import chunk_nll, chunk_tokens, tokenize_joined

RESULTS = Path(__file__).parent / "results"


def score(model: torch.nn.Module, chunks: torch.Tensor, cache: bool) -> tuple[float, float]:
    """(seconds, token perplexity) of one pass over the chunks."""
    start = time.perf_counter()
    if cache:
        with dense_weight_cache(model):
            total, count = chunk_nll(model, chunks)
    else:
        total, count = chunk_nll(model, chunks)
    return time.perf_counter() - start, math.exp(total / count)


def interleaved(configs: dict[str, tuple[torch.nn.Module, bool]], chunks: torch.Tensor,
                repeats: int) -> dict[str, tuple[float, float, list[float]]]:
    """Median seconds, perplexity and all times per configuration, the configurations taking turns in every
    repeat (so load from other processes on shared cores falls on all of them alike)."""
    times: dict[str, list[float]] = {name: [] for name in configs}
    ppl: dict[str, float] = {}
    for _ in range(repeats):
        for name, (model, cache) in configs.items():
            seconds, value = score(model, chunks, cache)
            assert ppl.setdefault(name, value) == value, (name, value, ppl[name])
            times[name].append(seconds)
    return {name: (statistics.median(t), ppl[name], t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="dense_cache")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    chunks = chunk_tokens(tokenize_joined(tokenizer, read_texts(args.data, "test")), args.seq_len, args.chunks)
    with tempfile.TemporaryDirectory() as tmp:
        spec = parse_spec({"kind": "quantize", "inputs": {"model": "m"}, "method": {"type": "rtn"},
                           "bits": args.bits, "group_size": args.group_size, "compute": {"threads": args.threads}})
        ctx, _ = local_context(Path(tmp) / "work", {"model": args.model})
        qdir = quantize.run(spec, ctx).artifacts["model"].path
        quantized = quant_format.load_quantized_model(qdir)
        dense = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
        rows = interleaved({"unquantized": (dense, False), "quantized, per-forward dequantization": (quantized, False),
                            "quantized, dense_weight_cache": (quantized, True)}, chunks, args.repeats)
    reference = rows["unquantized"][0]
    print(f"token_ppl of {chunks.shape[0]}x{chunks.shape[1]} test tokens, median of {args.repeats}, "
          f"{args.threads} threads ({args.model.name}, RTN {args.bits}-bit g{args.group_size})")
    print(f"(1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on this machine's "
          f"{os.cpu_count()} cores: other processes share them)")
    print(f"{'configuration':40s} {'median s':>8s} {'min s':>7s} {'x unquantized':>14s} {'ppl':>10s}")
    for name, (seconds, ppl, times) in rows.items():
        print(f"{name:40s} {seconds:8.2f} {min(times):7.2f} {seconds / reference:14.2f} {ppl:10.4f}")
    q, c = rows["quantized, per-forward dequantization"], rows["quantized, dense_weight_cache"]
    assert q[1] == c[1], "the cache changed the perplexity"
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    out.write_text(json.dumps({"model": str(args.model), "bits": args.bits, "group_size": args.group_size,
                               "chunks": list(chunks.shape), "threads": args.threads, "repeats": args.repeats,
                               "load_average_1min": [load_before, os.getloadavg()[0]],
                               "rows": {k: {"median_s": v[0], "min_s": min(v[2]),
                                            "ratio_to_unquantized": v[0] / reference, "token_ppl": v[1],
                                            "times_s": v[2]} for k, v in rows.items()},
                               "speedup_of_cache": q[0] / c[0]}, indent=2) + "\n")
    print(f"cache speed-up {q[0] / c[0]:.2f}x; wrote {out}")


if __name__ == "__main__":
    main()
