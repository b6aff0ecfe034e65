"""Perplexities: `token_ppl` over fixed-length chunks, `word_ppl`/`byte_ppl` over rolling windows.

token_ppl follows the quantization literature (GPTQ's wikitext2 protocol): join the split's texts
with blank lines, tokenize once, cut into non-overlapping `seq_len` chunks, and average the
next-token loss over all chunks (the first token of each chunk is context only).

word_ppl follows lm-evaluation-harness's `loglikelihood_rolling` exactly, so the numbers match it:
each document is tokenized without a BOS token; the first window is prefixed with the BOS token (EOS
if none) and scores up to `seq_len` tokens; every later window scores the next `seq_len` tokens with
one token of context, and the last window reaches back `seq_len` tokens for full context. Words are
`len(re.split(r"\\s+", doc))` (so a trailing newline counts as a word), bytes are UTF-8 bytes.

Both runners score a quantized model with its dequantized weights kept between forwards
(`kernels.qlinear.dense_weight_cache`, at most `DENSE_CACHE_MAX_BYTES`): the same numbers, without
unpacking every layer again for every batch.
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bitsmith.kernels.qlinear import dense_weight_cache
from bitsmith.platform.errors import DataError
from bitsmith.platform.specs.eval import TokenPplTask, WordPplTask, metric_prefix

from . import EvalEnv, TaskResult, evaluator
from .loglik import ScoredSequence, score_sequences, target_logprobs

DENSE_CACHE_MAX_BYTES = 4 * 1024 ** 3  # dequantized copies kept while scoring (SmolLM2-135M's layers: 0.42 GB fp32)


def tokenize_joined(tokenizer: Any, texts: Sequence[str], separator: str = "\n\n") -> torch.Tensor:
    """Token ids [N] of the texts joined by `separator`, without special tokens."""
    ids = tokenizer(separator.join(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def chunk_tokens(token_ids: torch.Tensor, seq_len: int, max_chunks: int | None = None) -> torch.Tensor:
    """Non-overlapping chunks [C, seq_len] from the start of `token_ids` (a short tail is dropped)."""
    count = token_ids.numel() // seq_len
    if max_chunks is not None:
        count = min(count, max_chunks)
    if count == 0:
        raise DataError(f"{token_ids.numel()} tokens make no chunk of seq_len {seq_len}; "
                        "expected more text or a smaller seq_len")
    return token_ids[: count * seq_len].view(count, seq_len)


@torch.inference_mode()
def chunk_nll(model: torch.nn.Module, token_chunks: torch.Tensor, batch_size: int = 8,
              on_batch: Callable[[int], None] | None = None) -> tuple[float, int]:
    """(sum of next-token negative log-likelihoods, tokens predicted) over chunks [C, T]."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, token_chunks.shape[0], batch_size):
        batch = token_chunks[start:start + batch_size].to(device)
        targets = torch.cat([batch[:, 1:], torch.full_like(batch[:, :1], -100)], dim=1)  # last position: no target
        total -= target_logprobs(model, batch, targets).double().sum().item()
        count += batch.shape[0] * (batch.shape[1] - 1)
        if on_batch is not None:
            on_batch(batch.shape[0])
    return total, count


def token_perplexity(model: torch.nn.Module, token_chunks: torch.Tensor, batch_size: int = 8,
                     on_batch: Callable[[int], None] | None = None) -> float:
    """exp(mean next-token NLL) over chunks [C, T]."""
    total, count = chunk_nll(model, token_chunks, batch_size, on_batch)
    return math.exp(total / count)


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_len: int) -> list[ScoredSequence]:
    """lm-evaluation-harness's disjoint rolling windows: (window tokens, how many of the last to score).

    Every token of the document is scored exactly once; the first with only `prefix_token` before it.
    """
    tokens = list(tokens)
    if not tokens:
        return []
    first = min(max_len, len(tokens))
    windows: list[ScoredSequence] = [([prefix_token] + tokens[:first], first)]
    predicted = first
    while predicted < len(tokens):
        n_scored = min(len(tokens) - predicted, max_len)
        end = predicted + n_scored
        windows.append((tokens[end - max_len - 1: end], n_scored))  # full context, even when it overlaps
        predicted = end
    return windows


def prefix_token_id(tokenizer: Any) -> int:
    """The token the first window of a document conditions on: BOS, else EOS (as lm-evaluation-harness)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise DataError("the tokenizer has neither a BOS nor an EOS token to start rolling windows with; "
                        "expected a model whose tokenizer defines bos_token or eos_token")
    return int(token)


def document_loglikelihoods(model: torch.nn.Module, tokenizer: Any, docs: Sequence[str], max_len: int,
                            batch_size: int = 8, on_batch: Callable[[int], None] | None = None,
                            ) -> tuple[list[float], int]:
    """(total log-likelihood of each document, tokens scored) with rolling windows of `max_len`."""
    prefix = prefix_token_id(tokenizer)
    windows: list[ScoredSequence] = []
    owner: list[int] = []
    for i, doc in enumerate(docs):
        tokens = tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]
        for window in rolling_windows(tokens, prefix, max_len):
            windows.append(window)
            owner.append(i)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = score_sequences(model, windows, batch_size=batch_size, pad_id=pad_id, on_batch=on_batch)
    totals = [0.0] * len(docs)
    for i, score in zip(owner, scores):
        totals[i] += score
    return totals, sum(n for _, n in windows)


def count_words(doc: str) -> int:
    """Words as lm-evaluation-harness counts them (an empty string after a trailing newline counts)."""
    return len(re.split(r"\s+", doc))


def word_byte_perplexity(docs: Sequence[str], loglikelihoods: Sequence[float]) -> dict[str, float]:
    """word_ppl, byte_ppl and bits_per_byte from per-document log-likelihoods (weighted by words/bytes)."""
    total = sum(loglikelihoods)
    words = sum(count_words(d) for d in docs)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    return {"word_ppl": math.exp(-total / words), "byte_ppl": math.exp(-total / n_bytes),
            "bits_per_byte": -total / n_bytes / math.log(2)}


def split_texts(env: EvalEnv, data_index: int, split: str) -> list[str]:
    """The texts of one split of dataset input `data_index`; DataError if there are none."""
    from bitsmith.workers.data.datasets import read_texts

    path = env.dataset(data_index).path
    texts = read_texts(path, split)
    if not any(texts):
        raise DataError(f"{path}: split {split!r} has no text; expected a non-empty split to evaluate on")
    return texts


def split_chunks(env: EvalEnv, data_index: int, split: str, seq_len: int, max_chunks: int | None) -> torch.Tensor:
    """`seq_len` chunks of a split's joined texts; DataError naming the dataset if it is too short."""
    token_ids = tokenize_joined(env.tokenizer, split_texts(env, data_index, split))
    if token_ids.numel() < seq_len:
        raise DataError(f"{env.dataset(data_index).path}: split {split!r} has {token_ids.numel()} tokens, "
                        f"fewer than one chunk; expected seq_len <= {token_ids.numel()}")
    return chunk_tokens(token_ids, seq_len, max_chunks)


@evaluator("token_ppl")
def run_token_ppl(task: TokenPplTask, env: EvalEnv) -> TaskResult:
    chunks = split_chunks(env, task.data_index, task.split, task.seq_len, task.max_chunks)
    start = time.perf_counter()
    with env.bar(chunks.shape[0], f"token_ppl {task.split}") as update, \
            dense_weight_cache(env.model, DENSE_CACHE_MAX_BYTES, env.dtype):
        total, count = chunk_nll(env.model, chunks, env.batch_size, update)
    seconds = time.perf_counter() - start
    ppl = math.exp(total / count)
    details = {"protocol": "fixed-length chunks of the joined text (GPTQ)", "chunks": chunks.shape[0],
               "seq_len": task.seq_len, "tokens_scored": count, "seconds": seconds,
               "tokens_per_s": chunks.numel() / seconds if seconds else None}
    return TaskResult(metrics={f"{metric_prefix(task)}token_ppl": ppl}, details=details)


@evaluator("word_ppl")
def run_word_ppl(task: WordPplTask, env: EvalEnv) -> TaskResult:
    from bitsmith.workers.models import model_max_length

    docs = split_texts(env, task.data_index, task.split)[: task.max_docs]
    max_len = task.seq_len or model_max_length(env.model, env.tokenizer)
    start = time.perf_counter()
    with env.bar(None, f"word_ppl {task.split} windows") as update, \
            dense_weight_cache(env.model, DENSE_CACHE_MAX_BYTES, env.dtype):
        lls, scored = document_loglikelihoods(env.model, env.tokenizer, docs, max_len, env.batch_size, update)
    seconds = time.perf_counter() - start
    values = word_byte_perplexity(docs, lls)
    prefix = metric_prefix(task)
    details = {"protocol": "rolling windows over whole documents (lm-evaluation-harness)", "documents": len(docs),
               "seq_len": max_len, "tokens_scored": scored, "seconds": seconds, **values}
    samples = [{"task": prefix.rstrip("/"), "doc": i, "start": doc[:80], "loglikelihood": ll,
                "words": count_words(doc), "bytes": len(doc.encode("utf-8"))}
               for i, (doc, ll) in enumerate(zip(docs, lls))]
    return TaskResult(metrics={f"{prefix}word_ppl": values["word_ppl"], f"{prefix}byte_ppl": values["byte_ppl"],
                               f"{prefix}bits_per_byte": values["bits_per_byte"]}, details=details, samples=samples)
