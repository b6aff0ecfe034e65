"""Benchmark: GRPO rollout + update throughput (samples/s) of bitsmith's `rl` job beside TRL's GRPOTrainer.

Same tiny model (a random-init Llama, 2 x 128, with a BPE tokenizer trained on arithmetic text), same
prompts (one-digit additions), same batch (8 prompts x 8 samples per step), same completion cap,
one update per rollout batch, no KL, fp32 on CPU with the same thread count, in one process. The first
steps of each run are warm-up and not timed; runs of the two alternate (`--repeats`) and the median step
time is reported, so load from other processes on shared cores hits both alike. TRL is a benchmark-only
dependency (`pip install trl`); without it the script reports bitsmith alone. Writes
`benchmarks/results/rl_bench.json`.

    python benchmarks/rl_bench.py [--steps 20] [--warmup 2] [--repeats 2] [--threads 1] [--max-new-tokens 8]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BITSMITH_NO_PROGRESS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

RESULTS = Path(__file__).resolve().parent / "results" / "rl_bench.json"
PROMPTS, GROUP = 8, 8


def build_model_and_data(work: Path) -> tuple[Path, Path]:
    """(HF model dir, prompts dataset dir)."""
    import torch

    from bitsmith.platform.specs.train import LlamaArch
    from bitsmith.workers.data.arithmetic import generate_arithmetic
    from bitsmith.workers.data.datasets import read_texts
    from bitsmith.workers.data.tokenizer import save_tokenizer, train_tokenizer
    from bitsmith.workers.train import build_llama

    data = generate_arithmetic(work / "data", n_train=200, n_test=20, n_calibration=10, min_operand=0,
                               max_operand=9, operations=["+"], seed=0)
    tokenizer = train_tokenizer(read_texts(data, "train") * 5, vocab_size=300, model_max_length=128)
    torch.manual_seed(0)
    model = build_llama(LlamaArch(layers=2, hidden_size=128, heads=4, max_seq_len=128), tokenizer)
    model.save_pretrained(work / "model")
    save_tokenizer(tokenizer, work / "model")
    return work / "model", data


def bench_bitsmith(model_dir: Path, data: Path, work: Path, steps: int, warmup: int, max_new: int,
                   threads: int) -> dict:
    from bitsmith.platform.context import local_context
    from bitsmith.platform.specs.rl import RLSpec
    from bitsmith.workers import rl

    spec = RLSpec.model_validate({
        "kind": "rl", "inputs": {"policy": "p", "data": "d"}, "data": {"eval_limit": 8},
        "sampling": {"group_size": GROUP, "prompts_per_step": PROMPTS, "max_new_tokens": max_new,
                     "dynamic_sampling": False},
        "optim": {"lr": 1e-5}, "steps": steps, "checkpoint_every_steps": 10_000, "compute": {"threads": threads},
        "rollout": {"workers": 1, "threads_per_worker": threads}})
    ctx, rec = local_context(Path(tempfile.mkdtemp(dir=work)), {"policy": model_dir, "data": data})
    rl.run(spec, ctx)
    return {"step_s": rec.metric("timing/step_s")[warmup:],
            "rollout_s": rec.metric("timing/rollout_s")[warmup:], "update_s": rec.metric("timing/update_s")[warmup:],
            "completion_tokens": rec.metric("rollout/response_length")[warmup:]}


def bench_trl(model_dir: Path, data: Path, work: Path, steps: int, warmup: int, max_new: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from bitsmith.workers.data.datasets import read_split
    from bitsmith.workers.grpo.rewards import get_reward

    records = read_split(data, "train")
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in records])
    exact = get_reward("exact_numeric")

    def reward(completions, answer, **_):
        return [exact(c, a) for c, a in zip(completions, answer)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    lengths: list[float] = []

    class Lengths(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    timer = StepTimer()
    config = GRPOConfig(output_dir=tempfile.mkdtemp(dir=work), per_device_train_batch_size=PROMPTS * GROUP,
                        num_generations=GROUP, max_completion_length=max_new, max_steps=steps, beta=0.0,
                        learning_rate=1e-5, temperature=1.0, logging_steps=1, report_to="none",
                        save_strategy="no", use_cpu=True, bf16=False, seed=0, dataloader_num_workers=0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[timer, Lengths()])
    trainer.train()
    return {"step_s": timer.times[warmup:], "completion_tokens": lengths[warmup:]}


def summarise(runs: list[dict]) -> dict:
    """Median step time over every timed step of every repeat (robust to other load on shared cores)."""
    merged = {k: [v for run in runs for v in run[k]] for k in runs[0]}
    out = {"samples_per_s": PROMPTS * GROUP / statistics.median(merged["step_s"]),
           "seconds_per_step": statistics.median(merged["step_s"]),
           "mean_completion_tokens": statistics.fmean(merged["completion_tokens"]),
           "timed_steps": len(merged["step_s"])}
    for key in ("rollout_s", "update_s"):
        if key in merged:
            out[f"{key}_per_step"] = statistics.median(merged[key])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each framework")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    results: dict = {"machine": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                     "threads": args.threads, "steps": args.steps, "warmup_steps": args.warmup,
                     "prompts_per_step": PROMPTS, "group_size": GROUP, "max_new_tokens": args.max_new_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir, data = build_model_and_data(work)
        try:
            import trl
            results["trl_version"] = trl.__version__
        except ImportError:
            trl = None
            results["trl"] = {"error": "trl is not installed (pip install trl); bitsmith measured alone"}
        ours, theirs = [], []
        for _ in range(args.repeats):  # alternate, so background load hits both alike
            ours.append(bench_bitsmith(model_dir, data, work, args.steps, args.warmup, args.max_new_tokens,
                                       args.threads))
            if trl is not None and "trl" not in results:
                torch.set_num_threads(args.threads)
                try:
                    theirs.append(bench_trl(model_dir, data, work, args.steps, args.warmup, args.max_new_tokens))
                except Exception as exc:  # reported, not hidden: the table says TRL did not run and why
                    results["trl"] = {"error": f"{type(exc).__name__}: {exc}"}
        results["bitsmith"] = summarise(ours)
        if theirs and "trl" not in results:
            results["trl"] = summarise(theirs)
    if "samples_per_s" in results.get("trl", {}):
        results["speedup"] = results["bitsmith"]["samples_per_s"] / results["trl"]["samples_per_s"]
    print(f"{'framework':<10} {'samples/s':>10} {'s/step':>8} {'tokens/completion':>18}")
    for name in ("bitsmith", "trl"):
        r = results.get(name, {})
        if "samples_per_s" in r:
            print(f"{name:<10} {r['samples_per_s']:>10.1f} {r['seconds_per_step']:>8.3f} "
                  f"{r['mean_completion_tokens']:>18.2f}")
        else:
            print(f"{name:<10} {r.get('error', 'not run')}")
    if "speedup" in results:
        print(f"speed-up (bitsmith / TRL): {results['speedup']:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
