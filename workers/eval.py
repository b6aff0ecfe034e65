"""The `eval` job: score one model on perplexity, KL, multiple-choice and generation tasks.

Reads top to bottom: set threads and determinism, load the model, run each task (native evaluators
or lm-evaluation-harness), then write the report (JSON, with the environment) and the per-sample
JSONL and return the headline metrics.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from bitsmith.platform.context import InputArtifact, OutputArtifact, RunContext, WorkerOutputs, environment
from bitsmith.platform.specs.eval import TASK_FILE_ROLE, EvalSpec
from bitsmith.workers.evaluators import EvalEnv, get_evaluator
from bitsmith.workers.models import DTYPES, load_model_and_tokenizer, resolve_device

log = logging.getLogger(__name__)


def run(spec: EvalSpec, ctx: RunContext) -> WorkerOutputs:
    torch.set_num_threads(spec.compute.threads)  # resolved from the job's cpus when the spec was parsed
    seed = ctx.seed_everything()
    with deterministic_mode(spec.deterministic):
        return evaluate(spec, ctx, seed)


def evaluate(spec: EvalSpec, ctx: RunContext, seed: int) -> WorkerOutputs:
    device = resolve_device(spec.compute.device)
    dtype = DTYPES[spec.compute.dtype]
    model_input = ctx.input("model")
    model, tokenizer = load_model_and_tokenizer(model_input.path, device, dtype)
    env = EvalEnv(model=model, tokenizer=tokenizer, device=device, dtype=dtype, batch_size=spec.batch_size,
                  seed=seed, work_dir=ctx.work_dir, datasets=dataset_inputs(ctx),
                  reference=ctx.inputs.get("reference"), progress=ctx.progress, task_files=task_file_inputs(ctx))

    started = time.perf_counter()
    if spec.backend == "lm_eval":
        from bitsmith.workers.evaluators.lm_eval_backend import evaluate_with_lm_eval

        results = evaluate_with_lm_eval(spec.tasks, env)
        for result in results:
            ctx.log_metrics(result.metrics)
    else:
        results = []
        for task in spec.tasks:
            result = get_evaluator(task.type)(task, env)
            ctx.log_metrics(result.metrics)
            results.append(result)
    metrics: dict[str, float] = {}
    for result in results:
        metrics.update(result.metrics)

    report = {"spec": spec.model_dump(mode="json"), "metrics": metrics,
              "tasks": [{"task": task.model_dump(mode="json"), **result.details}
                        for task, result in zip(spec.tasks, results)],
              "inputs": {name: {"digest": a.digest, "kind": a.kind} for name, a in ctx.inputs.items()},
              "settings": {"backend": spec.backend, "batch_size": spec.batch_size, "device": str(device),
                           "dtype": spec.compute.dtype, "deterministic": spec.deterministic, "seed": seed,
                           "threads": torch.get_num_threads()},
              "environment": environment(str(device), ("lm_eval",) if spec.backend == "lm_eval" else ()),
              "seconds": time.perf_counter() - started}
    report_path = ctx.output_path("report.json")
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    samples_path = ctx.output_path("samples.jsonl")
    with open(samples_path, "w", encoding="utf-8") as f:
        for result in results:
            for sample in result.samples:
                f.write(json.dumps(sample, ensure_ascii=False, default=str) + "\n")

    artifacts = {"report": OutputArtifact(report_path, kind="report", metadata={"backend": spec.backend}),
                 "samples": OutputArtifact(samples_path, kind="samples")}
    for result in results:
        artifacts.update(result.artifacts)
    return WorkerOutputs(artifacts=artifacts, metrics=metrics)


def task_file_inputs(ctx: RunContext) -> dict[str, InputArtifact]:
    """The `task_file.I` inputs (choice tasks' files), by digest."""
    return {a.digest: a for role, a in ctx.inputs.items() if role.split(".", 1)[0] == TASK_FILE_ROLE}


def dataset_inputs(ctx: RunContext) -> list[InputArtifact]:
    """Dataset inputs in `data_index` order: `data` alone, or `data.0`, `data.1`, ..."""
    if "data" in ctx.inputs:
        return [ctx.inputs["data"]]
    found: list[InputArtifact] = []
    while f"data.{len(found)}" in ctx.inputs:
        found.append(ctx.inputs[f"data.{len(found)}"])
    return found


@contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Deterministic kernels, no TF32 and no cuDNN autotuning while enabled; the previous settings after."""
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved[2:]
