"""Multiple-choice tasks scored by log-likelihood: acc (raw sum) and acc_norm (per character of the choice).

Records are `{"question" or "context": str, "choices": [str, ...], "label": int}`. Each choice is
scored as the continuation `target_delimiter + choice` of the question, tokenized the way
lm-evaluation-harness does (trailing spaces of the context move to the continuation; the
continuation's tokens are those of the whole string after the context's), so `acc` and `acc_norm`
match its `multiple_choice` output type.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitsmith.platform.errors import DataError
from bitsmith.platform.specs.eval import ChoiceTask, metric_prefix

from . import EvalEnv, TaskResult, evaluator
from .loglik import ScoredSequence, score_sequences


def choice_query(record: dict[str, Any]) -> str:
    return record["question"] if "question" in record else record["context"]


def check_choice_record(record: Any, where: str) -> dict[str, Any]:
    """Raise DataError naming `where` and the field unless `record` is a valid multiple-choice record."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: record is a {type(record).__name__}; expected a JSON object "
                        "with question (or context), choices and label")
    if "question" not in record and "context" not in record:
        raise DataError(f"{where}: missing field 'question' (or 'context'); expected the text the choices continue")
    if not isinstance(choice_query(record), str):
        raise DataError(f"{where}: field 'question'/'context' is a {type(choice_query(record)).__name__}; "
                        "expected a string")
    choices = record.get("choices")
    if choices is None:
        raise DataError(f"{where}: missing field 'choices'; expected a list of at least two strings")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise DataError(f"{where}: field 'choices' is {choices!r}; expected a list of at least two non-empty strings")
    label = record.get("label")
    if label is None:
        raise DataError(f"{where}: missing field 'label'; expected the index of the correct choice")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise DataError(f"{where}: field 'label' is {label!r}; expected an integer in 0..{len(choices) - 1}")
    return record


def read_choice_file(path: str | Path) -> list[dict[str, Any]]:
    """Records of a multiple-choice JSONL file; a bad line raises DataError naming the file and line."""
    from bitsmith.workers.data.datasets import read_text_file

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected a multiple-choice JSONL file")
    records = []
    for number, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                            "expected one JSON object per line") from None
        records.append(check_choice_record(record, f"{path}:{number}"))
    if not records:
        raise DataError(f"{path}: no records; expected at least one multiple-choice question")
    return records


def choice_file_of(task: ChoiceTask, env: EvalEnv) -> Path:
    """The verified JSONL file a task reads: its `file` input (a task-file artifact), or the split's file of
    dataset input `data_index`. A plain local path is refused: no digest would cover its bytes."""
    if task.file is not None:
        return env.task_file(task.file, f"tasks ({metric_prefix(task).rstrip('/')})").path
    from bitsmith.workers.data.datasets import split_file

    return split_file(env.dataset(task.data_index).path, task.split)


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as lm-evaluation-harness splits them; no special tokens."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return context_ids, whole[len(context_ids):]


def choice_loglikelihoods(model: torch.nn.Module, tokenizer: Any, records: Sequence[dict[str, Any]],
                          max_len: int, batch_size: int = 8, target_delimiter: str = " ",
                          on_batch: Callable[[int], None] | None = None) -> list[list[float]]:
    """Log-likelihood of each choice of each record (context truncated from the left to `max_len`)."""
    from .perplexity import prefix_token_id

    prefix = prefix_token_id(tokenizer)
    sequences: list[ScoredSequence] = []
    for record in records:
        for choice in record["choices"]:
            context = choice_query(record)
            if context:
                context_ids, continuation_ids = encode_pair(tokenizer, context, target_delimiter + choice)
            else:
                context_ids = [prefix]
                continuation_ids = tokenizer(target_delimiter + choice, add_special_tokens=False)["input_ids"]
            tokens = (context_ids + continuation_ids)[-(max_len + 1):]
            sequences.append((tokens, min(len(continuation_ids), len(tokens) - 1)))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = score_sequences(model, sequences, batch_size=batch_size, pad_id=pad_id, on_batch=on_batch)
    out, pos = [], 0
    for record in records:
        out.append(scores[pos:pos + len(record["choices"])])
        pos += len(record["choices"])
    return out


def score_choices(records: Sequence[dict[str, Any]], loglikelihoods: Sequence[Sequence[float]],
                  ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """({acc, acc_norm}, per-question samples); ties go to the first choice (as numpy's argmax)."""
    samples = []
    for record, lls in zip(records, loglikelihoods):
        lls_arr = np.asarray(lls, dtype=np.float64)
        lengths = np.asarray([float(len(c)) for c in record["choices"]])
        pred, pred_norm = int(np.argmax(lls_arr)), int(np.argmax(lls_arr / lengths))
        samples.append({"question": choice_query(record), "choices": record["choices"], "label": record["label"],
                        "loglikelihoods": list(map(float, lls)), "pred": pred, "pred_norm": pred_norm,
                        "correct": pred == record["label"], "correct_norm": pred_norm == record["label"]})
    n = max(len(samples), 1)
    return ({"acc": sum(s["correct"] for s in samples) / n,
             "acc_norm": sum(s["correct_norm"] for s in samples) / n}, samples)


@evaluator("choice")
def run_choice(task: ChoiceTask, env: EvalEnv) -> TaskResult:
    from bitsmith.workers.models import model_max_length

    path = choice_file_of(task, env)
    records = read_choice_file(path)[: task.limit]
    start = time.perf_counter()
    with env.bar(sum(len(r["choices"]) for r in records), "choice") as update:
        lls = choice_loglikelihoods(env.model, env.tokenizer, records, model_max_length(env.model, env.tokenizer),
                                    env.batch_size, task.target_delimiter, update)
    values, samples = score_choices(records, lls)
    prefix = metric_prefix(task)
    details = {"file": str(path), "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
               "questions": len(records), "seconds": time.perf_counter() - start, **values}
    for sample in samples:
        sample["task"] = prefix.rstrip("/")
    return TaskResult(metrics={f"{prefix}{k}": v for k, v in values.items()}, details=details, samples=samples)
