"""The `lm_eval` backend: run lm-evaluation-harness on the in-memory model over local tasks, offline.

Each spec task becomes a local YAML task over a JSONL file written into the work dir and loaded
with `TaskManager(include_path=DIR)`; nothing is downloaded. `word_ppl` maps to
`loglikelihood_rolling` (word/byte perplexity, bits per byte), `choice` to `multiple_choice`
(acc, acc_norm). The model is wrapped with `HFLM(pretrained=<model>, tokenizer=..., add_bos_token=False)`
so its numbers are comparable with the native evaluators'. Needs the optional `lm_eval` package.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bitsmith.platform.errors import SpecError
from bitsmith.platform.specs.eval import ChoiceTask, WordPplTask, metric_prefix

from . import EvalEnv, TaskResult

# lm-eval metric name -> bitsmith metric name
WORD_PPL_METRICS = {"word_perplexity": "word_ppl", "byte_perplexity": "byte_ppl", "bits_per_byte": "bits_per_byte"}
CHOICE_METRICS = {"acc": "acc", "acc_norm": "acc_norm"}


def import_lm_eval() -> Any:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import lm_eval
    except ImportError:
        raise SpecError("backend: lm_eval is not installed; expected `pip install lm_eval==0.4.13` "
                        "or backend native") from None
    return lm_eval


def write_task(task_dir: Path, name: str, records: Sequence[dict[str, Any]], config: dict[str, Any]) -> None:
    """A local lm-eval task: `NAME.jsonl` plus `NAME.yaml` (JSON is valid YAML) reading it as its test split."""
    task_dir.mkdir(parents=True, exist_ok=True)
    data_file = task_dir / f"{name}.jsonl"
    with open(data_file, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    yaml_config = {"task": name, "dataset_path": "json",
                   "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())},
                                      "cache_dir": str((task_dir / "hf_datasets_cache").resolve())},
                   "test_split": "test", "metadata": {"version": 1.0}, **config}
    (task_dir / f"{name}.yaml").write_text(json.dumps(yaml_config, indent=2))


def word_ppl_task_config() -> dict[str, Any]:
    return {"output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "text",
            "metric_list": [{"metric": m} for m in WORD_PPL_METRICS]}


def choice_task_config(target_delimiter: str) -> dict[str, Any]:
    return {"output_type": "multiple_choice", "doc_to_text": "query", "doc_to_choice": "choices",
            "doc_to_target": "label", "target_delimiter": target_delimiter,
            "metric_list": [{"metric": m} for m in CHOICE_METRICS]}


def task_hash(samples: Sequence[dict[str, Any]]) -> str | None:
    """The hash lm-eval's EvaluationTracker gives a task: over its samples' doc, prompt and target hashes."""
    from lm_eval.utils import hash_string

    if not samples:
        return None
    return hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in samples))


def evaluate_with_lm_eval(tasks: Sequence[Any], env: EvalEnv) -> list[TaskResult]:
    """One TaskResult per spec task (word_ppl or choice), run through `lm_eval.simple_evaluate`."""
    lm_eval = import_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from bitsmith.workers.models import model_max_length

    from .choice import choice_file_of, choice_query, read_choice_file
    from .perplexity import split_texts

    task_dir = env.work_dir / "lm_eval_tasks"
    names: list[str] = []
    for index, task in enumerate(tasks):  # write every local task first, then index them once
        names.append(f"bitsmith_{task.type}_{index}")
        if isinstance(task, WordPplTask):
            docs = split_texts(env, task.data_index, task.split)[: task.max_docs]
            write_task(task_dir, names[-1], [{"text": d} for d in docs], word_ppl_task_config())
        elif isinstance(task, ChoiceTask):
            records = read_choice_file(choice_file_of(task, env))[: task.limit]
            write_task(task_dir, names[-1], [{"query": choice_query(r), "choices": r["choices"], "label": r["label"]}
                                             for r in records], choice_task_config(task.target_delimiter))
        else:
            raise SpecError(f"tasks[{index}]: backend lm_eval cannot run {task.type!r} tasks; "
                            "expected word_ppl or choice")
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    results: list[TaskResult] = []
    for task, name in zip(tasks, names):
        is_ppl = isinstance(task, WordPplTask)
        max_len = (task.seq_len if is_ppl else None) or model_max_length(env.model, env.tokenizer)
        renames = WORD_PPL_METRICS if is_ppl else CHOICE_METRICS
        lm = HFLM(pretrained=env.model, tokenizer=env.tokenizer, batch_size=env.batch_size, max_length=max_len,
                  add_bos_token=False)
        start = time.perf_counter()
        out = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=manager, num_fewshot=0,
                                      bootstrap_iters=0, log_samples=True, random_seed=env.seed,
                                      numpy_random_seed=env.seed, torch_random_seed=env.seed,
                                      fewshot_random_seed=env.seed)
        seconds = time.perf_counter() - start
        raw = out["results"][name]
        prefix = metric_prefix(task)
        metrics = {f"{prefix}{ours}": float(raw[f"{theirs},none"]) for theirs, ours in renames.items()}
        samples = [{"task": prefix.rstrip("/"), "doc_id": s.get("doc_id"), "doc_hash": s.get("doc_hash"),
                    "target": s.get("target"), "responses": s.get("filtered_resps"),
                    "metrics": {m: s.get(m) for m in renames if m in s}}
                   for s in out.get("samples", {}).get(name, [])]
        details = {"backend": "lm_eval", "lm_eval_task": name, "lm_eval_version": lm_eval.__version__,
                   "task_version": out.get("versions", {}).get(name),
                   "task_hash": task_hash(out.get("samples", {}).get(name, [])), "seq_len": max_len,
                   "lm_eval_results": {k: v for k, v in raw.items() if k != "alias"}, "seconds": seconds}
        results.append(TaskResult(metrics=metrics, details=details, samples=samples))
    return results
