"""Which quantizer options make the best level database: output error of GPTQ variants at each width, per block.

For the chosen decoder blocks, every linear layer is quantized from the same calibration Hessian (the level
database's inputs: the unquantized blocks before it) with each option set, at 2/3/4 bits; the table shows the
parameter-weighted output relative error ||(W - Q(W)) X||² / ||W X||² (the `dp` allocation's loss) as a ratio to
GPTQ's plain loop, and the quantization seconds.

    nice -n 15 .venv/bin/python benchmarks/level_options_bench.py --model DIR --data DATASET_DIR \\
        [--group-size 64] [--blocks 0,15] [--sequences 32] [--seq-len 256]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bitsmith.kernels.gptq import output_relative_error
from bitsmith.platform.specs.quantize import GPTQMethod, ModuleSelection
from bitsmith.platform.specs.search import LevelsConfig
from bitsmith.workers.calibration import (architecture_layout, block_layers, calibration_batches, collect_hessians,
                                          dense_weight, plan_layers, sequential_blocks)
from bitsmith.workers.data.datasets import read_texts
from bitsmith.workers.quantizers import method_for

RESULTS = Path(__file__).parent / "results"
WIDTHS = (2, 3, 4)
OPTIONS = {"plain GPTQ (old level default)": (GPTQMethod(), False),
           "act-order + static groups": (GPTQMethod(act_order=True, static_groups=True), False),
           "act-order + static + mse_clip (new default)": (LevelsConfig().method, LevelsConfig().mse_clip),
           "act-order + static, damp 0.1": (GPTQMethod(act_order=True, static_groups=True, damp_percent=0.1), False),
           "plain + mse_clip": (GPTQMethod(), True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--group-size", type=int, default=64, help="-1: per-channel")
    parser.add_argument("--blocks", default="0", help="comma-separated decoder block indices")
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="level_options")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    group = None if args.group_size == -1 else args.group_size
    wanted = sorted(int(b) for b in args.blocks.split(","))
    layout = architecture_layout(model)
    plans = plan_layers(model, layout, bits=WIDTHS[0], group_size=group, modules=ModuleSelection())
    batches = calibration_batches(read_texts(args.data, "calibration"), tokenizer, args.sequences, args.seq_len, 8, 0)
    gptq = method_for("gptq")
    error = {name: {b: 0.0 for b in WIDTHS} for name in OPTIONS}
    seconds = {name: 0.0 for name in OPTIONS}
    weights = 0
    for k, block, calls in sequential_blocks(model, layout, batches, torch.device("cpu")):
        if k > wanted[-1]:
            break
        if k not in wanted:
            continue
        targets = block_layers(model, plans, k)
        hessians = collect_hessians(block, targets, calls, torch.device("cpu"))
        for name, module in targets.items():
            w = dense_weight(module).detach().float().clone()
            weights += w.numel()
            for option, (method, clip) in OPTIONS.items():
                for bits in WIDTHS:
                    t0 = time.perf_counter()
                    qw, _ = gptq(w, hessians[name], method, bits, plans[name].group_size, False, clip)
                    seconds[option] += time.perf_counter() - t0
                    error[option][bits] += output_relative_error(w, qw.dequantize(), hessians[name]) * w.numel()
    table = {o: {b: e / weights for b, e in row.items()} for o, row in error.items()}
    base = table["plain GPTQ (old level default)"]
    print(f"{args.model.name}: blocks {wanted}, group size {args.group_size}, {args.sequences}x{args.seq_len} "
          "calibration tokens; output relative error (x plain GPTQ), seconds")
    print(f"{'options':46s} " + " ".join(f"{f'{b}-bit':>18s}" for b in WIDTHS) + f" {'seconds':>8s}")
    for option, row in table.items():
        cells = " ".join(f"{row[b]:.5f} ({row[b] / base[b]:.2f}x)".rjust(18) for b in WIDTHS)
        print(f"{option:46s} {cells} {seconds[option]:8.1f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    out.write_text(json.dumps({"model": str(args.model), "blocks": wanted, "group_size": args.group_size,
                               "sequences": args.sequences, "seq_len": args.seq_len, "output_rel_error": table,
                               "ratio_to_plain": {o: {b: r[b] / base[b] for b in WIDTHS} for o, r in table.items()},
                               "seconds": seconds}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
