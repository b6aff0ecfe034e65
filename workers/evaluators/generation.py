"""Generation tasks: sample answers to prompts, extract and normalise them, score exact match, pass@k, maj@k.

Prompts are batched with left padding and attention masks. Sampling is seeded per batch, so a run's
outputs depend only on the seed, the data and the batch size.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from bitsmith.platform.errors import DataError
from bitsmith.platform.specs.eval import GenerationTask, metric_prefix

from . import EvalEnv, TaskResult, evaluator
from .answers import EXTRACTORS, gold_answer, maj_at_k, normalize_answer, pass_at_k


def left_pad(token_lists: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, T] with padding on the left."""
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        if tokens:
            ids[row, width - len(tokens):] = torch.tensor(list(tokens), dtype=torch.long)
            mask[row, width - len(tokens):] = 1
    return ids, mask


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[: min(cuts)] if cuts else text


@torch.inference_mode()
def generate_samples(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], n_samples: int = 1,
                     temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 64,
                     batch_size: int = 8, stop: Sequence[str] = (), seed: int = 0,
                     on_batch: Callable[[int], None] | None = None) -> list[list[str]]:
    """`n_samples` completions per prompt (greedy when temperature is 0), cut at the first stop string."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 \
        else {"do_sample": False}
    config = GenerationConfig(max_new_tokens=max_new_tokens, num_return_sequences=n_samples, pad_token_id=pad_id,
                              eos_token_id=tokenizer.eos_token_id, **sampling)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    outputs: list[list[str]] = []
    for number, start in enumerate(range(0, len(prompts), batch_size)):
        ids, mask = left_pad(encoded[start:start + batch_size], pad_id)
        torch.manual_seed(seed + number)
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                   generation_config=config)
        texts = tokenizer.batch_decode(generated[:, ids.shape[1]:], skip_special_tokens=True)
        for i in range(ids.shape[0]):
            outputs.append([cut_at_stop(t, stop) for t in texts[i * n_samples:(i + 1) * n_samples]])
        if on_batch is not None:
            on_batch(ids.shape[0])
    return outputs


def score_generations(prompts: Sequence[str], golds: Sequence[str], outputs: Sequence[Sequence[str]],
                      extractor: str, ks: Sequence[int], maj_subsets: int = 32, seed: int = 0,
                      ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics (exact_match = mean correctness of all samples, pass@k, maj@k for k > 1,
    extraction_failure_rate) and one sample record per prompt."""
    extract = EXTRACTORS.lookup(extractor)
    rng = np.random.default_rng(seed)
    n = len(outputs[0]) if outputs else 0
    totals = {f"pass@{k}": 0.0 for k in ks} | {f"maj@{k}": 0.0 for k in ks if k > 1}
    correct_total = failures = 0
    samples = []
    for prompt, gold_raw, outs in zip(prompts, golds, outputs):
        gold = gold_answer(gold_raw)
        raw = [extract(o) for o in outs]
        answers = [normalize_answer(a) if a is not None else None for a in raw]
        correct = [a is not None and a == gold for a in answers]
        c = sum(correct)
        correct_total += c
        failures += sum(a is None for a in answers)
        for k in ks:
            totals[f"pass@{k}"] += pass_at_k(n, c, k)
            if k > 1:
                totals[f"maj@{k}"] += maj_at_k(answers, gold, k, maj_subsets, rng)
        samples.append({"prompt": prompt, "gold": gold_raw, "gold_normalized": gold, "outputs": list(outs),
                        "extracted": raw, "normalized": answers, "correct": correct})
    m = max(len(samples), 1)
    metrics = {"exact_match": correct_total / max(m * n, 1), **{k: v / m for k, v in totals.items()},
               "extraction_failure_rate": failures / max(m * n, 1)}
    return metrics, samples


def read_prompts(env: EvalEnv, task: GenerationTask) -> list[dict[str, Any]]:
    from bitsmith.workers.data.datasets import dataset_info, read_split

    path = env.dataset(task.data_index).path
    if dataset_info(path)["format"] != "prompts":
        raise DataError(f"{path}: generation tasks read a 'prompts' dataset; this one is "
                        f"{dataset_info(path)['format']!r}")
    records = read_split(path, task.split)[: task.limit]
    if not records:
        raise DataError(f"{path}: split {task.split!r} has no prompts; expected a non-empty split")
    return records


@evaluator("generation")
def run_generation(task: GenerationTask, env: EvalEnv) -> TaskResult:
    records = read_prompts(env, task)
    prompts = [r["prompt"] for r in records]
    start = time.perf_counter()
    with env.bar(len(prompts), "generation") as update:
        outputs = generate_samples(env.model, env.tokenizer, prompts, task.n_samples, task.temperature, task.top_p,
                                   task.max_new_tokens, env.batch_size, task.stop, env.seed, update)
    seconds = time.perf_counter() - start
    values, samples = score_generations(prompts, [r["answer"] for r in records], outputs, task.extractor,
                                        task.k, task.maj_subsets, env.seed)
    prefix = metric_prefix(task)
    for sample in samples:
        sample["task"] = prefix.rstrip("/")
    details = {"prompts": len(prompts), "n_samples": task.n_samples, "temperature": task.temperature,
               "extractor": task.extractor, "seconds": seconds, **values}
    return TaskResult(metrics={f"{prefix}{k}": v for k, v in values.items()}, details=details, samples=samples)
