"""Benchmark: EvoPress fitness evaluations per second (Ray actors), and held-out perplexity vs evaluations.

Measures, on one small trained Llama and the built-in pydoc corpus:
  * fitness evaluations/s (KL to the cached reference on `--eval-sequences` calibration sequences per
    evaluation) with the in-process pool and with 1 and 2 Ray actors (a real local Ray instance;
    pools from `bitsmith.platform.scheduler.actors.ray_actor_pool`, each actor holding one model copy
    and swapping in only changed layers);
  * held-out (test split) token perplexity of the evo parent after 0, 5, 10, ... generations, against
    the number of fitness evaluations spent, beside `uniform` and `dp` at the same budget (one run).
Prints tables and writes `benchmarks/results/search_bench.json`.

The default model is the test suite's `trained_lm` fixture (built by `pytest tests/workers/test_search.py`
or any test using it); pass `--model DIR --data DIR` for others.

    python benchmarks/search_bench.py [--model DIR --data DIR] [--bits-per-weight 3.0] [--generations 40]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("BITSMITH_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "search_bench.json"


def newest_fixture(name: str, sub: str) -> Path:
    found = sorted((ROOT / ".pytest_cache" / "bitsmith-fixtures").glob(f"{name}-*/{sub}"),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit(f"search_bench: no {name} fixture; run `pytest tests/workers/test_search.py` once, "
                 "or pass --model and --data")
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--bits-per-weight", type=float, default=3.0)
    parser.add_argument("--generations", type=int, default=40)
    parser.add_argument("--evals", type=int, default=64, help="fitness evaluations per throughput measurement")
    parser.add_argument("--eval-sequences", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model_dir = args.model or newest_fixture("trained-lm", "model")
    data_dir = args.data or newest_fixture("pydoc-corpus", "dataset")

    import torch

    torch.set_num_threads(1)
    from bitsmith.platform.context import local_context
    from bitsmith.platform.specs import parse_spec
    from bitsmith.workers import search
    from bitsmith.workers.allocation import evo
    from bitsmith.workers.allocation.levels import AllocationModel, load_level_db
    from bitsmith.workers.data.datasets import read_texts
    from bitsmith.workers.evaluators.kl import compute_reference_logits
    from bitsmith.workers.evaluators.perplexity import chunk_tokens, token_perplexity, tokenize_joined
    from bitsmith.workers.models import load_model_and_tokenizer
    from bitsmith.workers.calibration import calibration_batches

    work = Path(tempfile.mkdtemp(prefix="search-bench-"))
    levels = {"bits": [2, 3, 4], "group_size": None, "sequences": 32, "seq_len": 128}
    spec = parse_spec({"kind": "search", "inputs": {"model": "m", "calibration": "c"}, "method": {"type": "uniform"},
                       "budget": {"type": "avg_bits", "bits_per_weight": args.bits_per_weight}, "levels": levels})
    ctx, _ = local_context(work, {"model": model_dir, "calibration": data_dir})
    started = time.perf_counter()
    baseline = search.run(spec, ctx)  # builds the level database, measures uniform and dp
    baseline_s = time.perf_counter() - started
    db = load_level_db(next((work / "derived").glob("level-db-*")))
    rows = {r["method"]: r for r in json.loads(baseline.artifacts["report"].path.read_text())["table"]}

    model, tokenizer = load_model_and_tokenizer(model_dir)
    texts = read_texts(data_dir, "calibration")
    seqs = torch.cat(calibration_batches(texts, tokenizer, 32, 128, 32, seed=1))
    reference_file = work / "fitness_reference.safetensors"
    from safetensors.torch import save_file

    save_file(compute_reference_logits(model, seqs), str(reference_file))
    costs, cap = search.budget_costs(spec, db)
    start = search.uniform_allocation(costs, cap, spec)
    groups = evo.equal_size_groups(db)
    bits = [[lv.bits for lv in layer.levels] for layer in db.layers]
    rng = random.Random(0)
    candidates = [evo.mutate(start, groups, bits, rng, 3) for _ in range(args.evals)]
    items = [{"levels": c, "sequences": rng.sample(range(seqs.shape[0]), args.eval_sequences)} for c in candidates]
    actor_args = (str(model_dir), str(db.path), str(reference_file))

    # -- fitness evaluations per second (best of interleaved repeats: the 2 cores are shared) ---------------
    import ray

    from bitsmith.platform.scheduler.actors import ray_actor_pool

    # 3 logical CPUs hold the 1- and 2-actor pools at once (so repeats interleave); one pool computes at a time.
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    pools = {("in-process", 1): _Pool(evo.FitnessActor(*actor_args, threads=1))}
    try:
        for n in (1, 2):
            pools[("ray", n)] = ray_actor_pool(evo.FitnessActor, n, actor_args, {"threads": 1}, 1.0, 0.0)
            pools[("ray", n)].call_all("ping")
        best = {key: 0.0 for key in pools}
        for _ in range(args.repeats):
            for key, pool in pools.items():
                pool.map("kl", items[: 2 * pool.size])  # warm: first calls, page faults
                t0 = time.perf_counter()
                pool.map("kl", items)
                best[key] = max(best[key], len(items) / (time.perf_counter() - t0))
    finally:
        for key, pool in pools.items():
            if key[0] == "ray":
                pool.close()
        ray.shutdown()
    throughput = [{"pool": pool, "actors": n, "evals_per_s": value} for (pool, n), value in best.items()]

    # -- held-out perplexity vs fitness evaluations ------------------------------------------------------
    test_chunks = chunk_tokens(tokenize_joined(tokenizer, read_texts(data_dir, "test")), 128, 64)
    stitched = AllocationModel(model, db)
    evo_spec = parse_spec({"kind": "search", "inputs": {"model": "m", "calibration": "c"},
                           "method": {"type": "evo", "fitness_sequences": 32, "checkpoint_every": 10_000},
                           "budget": {"type": "avg_bits", "bits_per_weight": args.bits_per_weight}, "levels": levels})
    method = evo_spec.method
    fitness = evo.FitnessActor(*actor_args, threads=1)
    curve = [{"generation": 0, "evaluations": 0,
              "test_token_ppl": token_perplexity(stitched.apply(start), test_chunks)}]
    state = None
    marks = sorted({g for g in (5, 10, 20, 40, 80, 160) if g <= args.generations} | {args.generations})
    evo_started = time.perf_counter()
    for mark in marks:
        state = evo.evolve(method.model_copy(update={"generations": mark}), db, start, _Pool(fitness), seqs.shape[0],
                           0, "bench", lambda m, s: None, lambda s, g: None, resume=state)
        curve.append({"generation": mark, "evaluations": state.evaluations,
                      "test_token_ppl": token_perplexity(stitched.apply(state.parent), test_chunks)})
    evo_s = time.perf_counter() - evo_started

    print(f"\nfitness evaluations/s ({args.eval_sequences} x 128 tokens each, {len(db.layers)} layers, "
          f"{db.total_params()} searched weights):")
    for row in throughput:
        print(f"  {row['pool']:10s} actors={row['actors']}  {row['evals_per_s']:8.1f} /s")
    print(f"\nheld-out token perplexity at {args.bits_per_weight} bits per weight (levels 2/3/4, per-channel):")
    print(f"  unquantized {rows['unquantized']['test_token_ppl']:.4f}")
    print(f"  uniform     {rows['uniform']['test_token_ppl']:.4f}")
    print(f"  dp          {rows['dp']['test_token_ppl']:.4f}")
    for point in curve:
        print(f"  evo gen {point['generation']:4d} after {point['evaluations']:5d} evaluations: "
              f"{point['test_token_ppl']:.4f}")
    result = {"model": str(model_dir), "bits_per_weight": args.bits_per_weight, "levels": levels,
              "eval_sequences": args.eval_sequences, "throughput": throughput,
              "baselines": {k: rows[k]["test_token_ppl"] for k in ("unquantized", "uniform", "dp")},
              "evo_curve": curve, "evo_seconds": evo_s, "level_db_and_baselines_seconds": baseline_s,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


class _Pool:
    """The in-process pool over one already-built actor (the curve is about evaluations, not speed)."""

    def __init__(self, actor):
        self.actor, self.size = actor, 1

    def map(self, method: str, items: list) -> list:
        return [getattr(self.actor, method)(item) for item in items]


if __name__ == "__main__":
    main()
