"""KL divergence of a model to a reference model's cached next-token distributions.

One reference pass (`compute_reference_logits`) is stored as safetensors and reused to score any
number of candidates (`kl_to_reference`), e.g. every configuration a search tries. With `top_k`
only the reference's k most likely tokens are kept; the rest of both distributions is lumped into
one tail bucket, which gives the KL of the coarsened distributions: a lower bound of the full KL
(data-processing inequality), exact when the reference puts no mass outside its top k.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bitsmith.platform.context import OutputArtifact
from bitsmith.platform.digests import write_artifact_meta
from bitsmith.platform.errors import DataError
from bitsmith.platform.specs.eval import KLTask, metric_prefix

from . import EvalEnv, TaskResult, evaluator
from .loglik import forward_logits

log = logging.getLogger(__name__)
LOGITS_FILE = "reference_logits.safetensors"


@torch.inference_mode()
def compute_reference_logits(model: torch.nn.Module, token_chunks: torch.Tensor, top_k: int | None = None,
                             batch_size: int = 8, on_batch: Callable[[int], None] | None = None,
                             ) -> dict[str, torch.Tensor]:
    """The reference's log-probabilities at every position of chunks [C, T] (fp32, on the CPU).

    Returns `{"input_ids", "log_probs" [C, T, V]}`, or with `top_k`
    `{"input_ids", "topk_log_probs" [C, T, k], "topk_indices" [C, T, k]}`.
    """
    device = next(model.parameters()).device
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, token_chunks.shape[0], batch_size):
        batch = token_chunks[start:start + batch_size]
        log_probs = F.log_softmax(forward_logits(model, batch.to(device)).float(), dim=-1)
        if top_k is None:
            parts.append((log_probs.cpu(),))
        else:
            values, indices = log_probs.topk(min(top_k, log_probs.shape[-1]), dim=-1)
            parts.append((values.cpu(), indices.cpu()))
        if on_batch is not None:
            on_batch(batch.shape[0])
    reference = {"input_ids": token_chunks.to(torch.long).cpu().contiguous()}
    if top_k is None:
        reference["log_probs"] = torch.cat([p[0] for p in parts])
    else:
        reference["topk_log_probs"] = torch.cat([p[0] for p in parts])
        reference["topk_indices"] = torch.cat([p[1] for p in parts])
    return reference


def token_kl(reference_part: dict[str, torch.Tensor], log_q: torch.Tensor) -> torch.Tensor:
    """Per-position KL(P || Q) [B, T] given the candidate's log-probs `log_q` [B, T, V]."""
    if "log_probs" in reference_part:
        log_p = reference_part["log_probs"]
        if log_p.shape[-1] != log_q.shape[-1]:
            raise DataError(f"reference vocabulary {log_p.shape[-1]} != model vocabulary {log_q.shape[-1]}; "
                            "expected models sharing one tokenizer")
        return F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1).clamp_min(0)
    log_p = reference_part["topk_log_probs"]
    log_q_top = log_q.gather(-1, reference_part["topk_indices"])
    p = log_p.exp()
    head = (p * (log_p - log_q_top)).sum(-1)
    p_tail = (1 - p.sum(-1)).clamp_min(0)
    q_tail = (1 - log_q_top.exp().sum(-1)).clamp_min(torch.finfo(log_q.dtype).tiny)
    return (head + torch.xlogy(p_tail, p_tail) - p_tail * q_tail.log()).clamp_min(0)  # >= 0 up to rounding


@torch.inference_mode()
def kl_to_reference(model: torch.nn.Module, token_chunks: torch.Tensor | None,
                    reference: dict[str, torch.Tensor], batch_size: int = 8,
                    on_batch: Callable[[int], None] | None = None) -> float:
    """Mean per-token KL(reference || model) over the reference's chunks (checked equal to `token_chunks`)."""
    ids = reference["input_ids"]
    if token_chunks is not None and not torch.equal(token_chunks.cpu().to(torch.long), ids):
        raise DataError(f"token chunks {tuple(token_chunks.shape)} differ from the reference's "
                        f"{tuple(ids.shape)}; expected the chunks the reference was computed on")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, ids.shape[0], batch_size):
        stop = start + batch_size
        log_q = F.log_softmax(forward_logits(model, ids[start:stop].to(device)).float(), dim=-1)
        part = {k: v[start:stop].to(device) for k, v in reference.items() if k != "input_ids"}
        kl = token_kl(part, log_q)
        total += kl.double().sum().item()
        count += kl.numel()
        if on_batch is not None:
            on_batch(kl.shape[0])
    return total / count


def save_reference_logits(directory: str | Path, reference: dict[str, torch.Tensor],
                          metadata: dict[str, object]) -> Path:
    """Write a `logits` artifact directory: safetensors (no pickle) plus `artifact.json`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in reference.items()}, str(directory / LOGITS_FILE),
              metadata={k: json.dumps(v) for k, v in metadata.items()})
    write_artifact_meta(directory, {"kind": "logits", **metadata})
    return directory


def load_reference_logits(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `logits` artifact (its directory or the safetensors file)."""
    from safetensors.torch import load_file

    path = Path(path)
    file = path / LOGITS_FILE if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{path}: no {LOGITS_FILE}; expected a `logits` artifact from an eval with a kl task")
    reference = load_file(str(file))
    if "input_ids" not in reference or not ({"log_probs"} <= reference.keys()
                                            or {"topk_log_probs", "topk_indices"} <= reference.keys()):
        raise DataError(f"{file}: tensors {sorted(reference)}; expected input_ids and log_probs "
                        "(or topk_log_probs and topk_indices)")
    return reference


def is_logits_artifact(path: str | Path) -> bool:
    return (Path(path) / LOGITS_FILE).is_file()


@evaluator("kl")
def run_kl(task: KLTask, env: EvalEnv) -> TaskResult:
    from bitsmith.workers.models import load_model_and_tokenizer

    from .perplexity import split_chunks

    if env.reference is None:
        raise DataError("kl: no inputs.reference; expected a reference model or logits artifact")
    chunks = split_chunks(env, task.data_index, task.split, task.seq_len, task.max_chunks)
    artifacts: dict[str, OutputArtifact] = {}
    details: dict[str, object] = {"chunks": chunks.shape[0], "seq_len": task.seq_len, "top_k": task.top_k,
                                  "reference_digest": env.reference.digest}
    if is_logits_artifact(env.reference.path):
        reference = load_reference_logits(env.reference.path)
        if ("topk_indices" in reference) != (task.top_k is not None) or (
                task.top_k is not None and reference["topk_indices"].shape[-1] != task.top_k):
            raise DataError(f"{env.reference.path}: cached logits were stored with a different top_k than "
                            f"the task's {task.top_k}; expected matching top_k")
        details["reference_source"] = "cached logits"
    else:
        ref_model, _ = load_model_and_tokenizer(env.reference.path, env.device, env.dtype)
        size_bytes = chunks.numel() * (task.top_k * 12 if task.top_k else ref_model.config.vocab_size * 4)
        if size_bytes > 2**30:
            log.warning("kl: the cached reference logits take %.1f GiB; set top_k (e.g. 64) or fewer max_chunks "
                        "to shrink them", size_bytes / 2**30)
        start = time.perf_counter()
        with env.bar(chunks.shape[0], "kl reference") as update:
            reference = compute_reference_logits(ref_model, chunks, task.top_k, env.batch_size, update)
        details["reference_seconds"] = time.perf_counter() - start
        del ref_model
        name = f"{metric_prefix(task).rstrip('/') or 'kl'}_reference_logits".replace("/", "_")
        meta = {"split": task.split, "seq_len": task.seq_len, "chunks": int(chunks.shape[0]), "top_k": task.top_k,
                "reference_model": env.reference.digest, "dataset": env.dataset(task.data_index).digest}
        directory = save_reference_logits(env.work_dir / "outputs" / name, reference, meta)
        artifacts["reference_logits" if name == "kl_reference_logits" else name] = OutputArtifact(
            directory, kind="logits", metadata=meta)
        details["reference_source"] = "reference model"
    start = time.perf_counter()
    with env.bar(chunks.shape[0], "kl") as update:
        value = kl_to_reference(env.model, chunks, reference, env.batch_size, update)
    details["seconds"] = time.perf_counter() - start
    return TaskResult(metrics={f"{metric_prefix(task)}kl": value}, details=details, artifacts=artifacts)
