"""Benchmark: tokens/s of the native perplexity evaluators beside lm-evaluation-harness, same model, same text.

Measures, in one process and on one model:
  * native `token_ppl` (fixed-length chunks of the joined documents),
  * native `word_ppl` (rolling windows, lm-evaluation-harness's protocol),
  * lm-evaluation-harness 0.4.13 `loglikelihood_rolling` on the same documents (HFLM over the in-memory
    model, add_bos_token=False, same max_length and batch size): once the bare `loglikelihood_rolling`
    call, once the whole `simple_evaluate` on a local task (task building, tokenization, metrics).
Checks that native word/byte perplexity equal lm-eval's (fp32), prints a table and writes
`benchmarks/results/eval_bench.json`. The default model is a random-init Llama (4 x 256, vocab 4096;
weights do not change throughput) with a BPE tokenizer trained on the built-in pydoc corpus; pass
`--model DIR` to time another HF model directory.

    python benchmarks/eval_bench.py [--model DIR] [--seq-len 512] [--batch-size 8] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BITSMITH_NO_PROGRESS", "1")

RESULTS = Path(__file__).resolve().parent / "results" / "eval_bench.json"


def build_default_model(work: Path, texts: list[str], layers: int, hidden: int, vocab: int, seq_len: int) -> Path:
    import torch

    from bitsmith.platform.specs.train import LlamaArch
    from bitsmith.workers.data.tokenizer import train_tokenizer
    from bitsmith.workers.train import build_llama

    tokenizer = train_tokenizer(texts, vocab, model_max_length=seq_len)
    torch.manual_seed(0)
    model = build_llama(LlamaArch(layers=layers, hidden_size=hidden, heads=max(1, hidden // 64), max_seq_len=seq_len),
                        tokenizer)
    out = work / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def best_of_interleaved(repeats: int, fns: dict) -> dict:
    """{name: (fastest seconds, result)}, running the functions in turn `repeats` times.

    Round-robin plus the minimum keeps a burst of other load on a shared machine from landing on one
    evaluator only.
    """
    best = {name: (math.inf, None) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            result = fn()
            seconds = time.perf_counter() - start
            if seconds < best[name][0]:
                best[name] = (seconds, result)
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="HF model directory (default: a random-init 4x256 Llama)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--docs", type=int, default=120, help="documents of the corpus's test+calibration splits")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from bitsmith.workers.data.corpus import build_builtin_corpus
    from bitsmith.workers.data.datasets import read_texts
    from bitsmith.workers.evaluators.perplexity import (chunk_nll, chunk_tokens, document_loglikelihoods,
                                                        tokenize_joined, word_byte_perplexity)
    from bitsmith.workers.models import load_model_and_tokenizer

    work = Path(tempfile.mkdtemp(prefix="eval_bench_"))
    corpus = build_builtin_corpus(work / "corpus")
    docs = (read_texts(corpus, "test") + read_texts(corpus, "calibration"))[: args.docs]
    model_dir = args.model or build_default_model(work, read_texts(corpus, "train"), 4, 256, 4096, args.seq_len)
    model, tok = load_model_and_tokenizer(model_dir, torch.device(args.device), torch.float32)
    doc_tokens = sum(len(tok(d, add_special_tokens=False, verbose=False)["input_ids"]) for d in docs)

    # -- native ----------------------------------------------------------------------------------------
    chunks = chunk_tokens(tokenize_joined(tok, docs), args.seq_len)
    import lm_eval
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from bitsmith.workers.evaluators.lm_eval_backend import word_ppl_task_config, write_task

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size, max_length=args.seq_len,
              add_bos_token=False)
    requests = [Instance(request_type="loglikelihood_rolling", doc={"text": d}, arguments=(d,), idx=0) for d in docs]
    chunk_nll(model, chunks[:2])  # warm-up
    timed = best_of_interleaved(args.repeats, {
        "token": lambda: chunk_nll(model, chunks, args.batch_size),
        "word": lambda: document_loglikelihoods(model, tok, docs, args.seq_len, args.batch_size),
        "harness": lambda: lm.loglikelihood_rolling(requests, disable_tqdm=True)})
    t_token, (nll, count) = timed["token"]
    t_word, (lls, scored) = timed["word"]
    t_harness_core, harness_lls = timed["harness"]
    native = word_byte_perplexity(docs, lls)

    # -- lm-evaluation-harness end to end (task files, dataset loading, tokenization, metrics) -----------
    task_dir = work / "lm_eval_tasks"
    write_task(task_dir, "bench_word_ppl", [{"text": d} for d in docs], word_ppl_task_config())
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=["bench_word_ppl"], task_manager=manager, num_fewshot=0,
                                  bootstrap_iters=0, log_samples=False)
    t_harness_full = time.perf_counter() - start
    harness = out["results"]["bench_word_ppl"]

    rel = {"word_ppl": native["word_ppl"] / harness["word_perplexity,none"] - 1,
           "byte_ppl": native["byte_ppl"] / harness["byte_perplexity,none"] - 1,
           "doc_loglikelihood_max": max(abs(a / b - 1) for a, b in zip(lls, harness_lls) if b)}
    rows = [
        ("native token_ppl (chunks)", count, t_token, f"token_ppl {math.exp(nll / count):.4f}"),
        ("native word_ppl (rolling)", scored, t_word, f"word_ppl {native['word_ppl']:.4f}"),
        ("lm-eval loglikelihood_rolling", doc_tokens, t_harness_core,
         f"word_ppl {word_byte_perplexity(docs, harness_lls)['word_ppl']:.4f}"),
        ("lm-eval simple_evaluate", doc_tokens, t_harness_full,
         f"word_ppl {harness['word_perplexity,none']:.4f}"),
    ]
    result = {
        "setup": {"model": str(args.model or "random-init Llama 4x256, vocab 4096"),
                  "parameters": sum(p.numel() for p in model.parameters()), "seq_len": args.seq_len,
                  "batch_size": args.batch_size, "threads": args.threads, "device": args.device, "dtype": "fp32",
                  "documents": len(docs), "document_tokens": doc_tokens, "chunks": int(chunks.shape[0]),
                  "repeats": args.repeats},
        "rows": [{"name": n, "tokens": t, "seconds": s, "tokens_per_s": t / s, "value": v} for n, t, s, v in rows],
        "ratios": {"token_ppl_vs_lm_eval_core": (count / t_token) / (doc_tokens / t_harness_core),
                   "token_ppl_vs_lm_eval_simple_evaluate": (count / t_token) / (doc_tokens / t_harness_full),
                   "word_ppl_vs_lm_eval_core": (scored / t_word) / (doc_tokens / t_harness_core)},
        "agreement_relative": rel,
        "environment": {"python": sys.version.split()[0], "platform": platform.platform(),
                        "torch": torch.__version__, "lm_eval": lm_eval.__version__,
                        "cpu_count": os.cpu_count()},
    }
    print(f"{'evaluator':32} {'tokens':>8} {'seconds':>8} {'tokens/s':>10}  value", file=sys.stdout)
    for row in result["rows"]:
        print(f"{row['name']:32} {row['tokens']:8d} {row['seconds']:8.2f} {row['tokens_per_s']:10.0f}  {row['value']}")
    for name, value in result["ratios"].items():
        print(f"ratio {name}: {value:.2f}x")
    print(f"native vs lm-eval: word_ppl rel {rel['word_ppl']:+.2e}, byte_ppl rel {rel['byte_ppl']:+.2e}, "
          f"per-document log-likelihood max rel {rel['doc_loglikelihood_max']:.2e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if abs(rel["word_ppl"]) > 1e-4 or abs(rel["byte_ppl"]) > 1e-4:
        raise SystemExit("native word_ppl disagrees with lm-eval; see the table")
    return result


if __name__ == "__main__":
    main()
