"""The `train` job: pretrain a small Llama LM on a text dataset, or fine-tune (SFT) a model on prompts.

Reads top to bottom: pick threads and device, build tokenizer + model + fixed example blocks (or
restore them from a checkpoint), train with AdamW (linear warmup, cosine decay), evaluate held-out
loss on the `calibration` split, checkpoint, and write the model, a loss curve and a report.
Data order is a pure function of (seed, step), so a resumed run on CPU ends bit-identical to an
uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bitsmith.platform.context import OutputArtifact, RunContext, WorkerOutputs
from bitsmith.platform.digests import write_artifact_meta
from bitsmith.platform.errors import DataError, JobError
from bitsmith.platform.specs.train import LlamaArch, TrainSpec
from bitsmith.workers.data.batches import IGNORE, TokenBlocks, batch_indices, pack_documents, sft_examples, unigram_ppl
from bitsmith.workers.data.datasets import dataset_info, read_split, read_texts
from bitsmith.workers.checkpoints import read_checkpoint, write_checkpoint
from bitsmith.workers.data.tokenizer import encode_plain, save_tokenizer, train_tokenizer
from bitsmith.workers.models import SAFE_LOADING
from bitsmith.workers.models_import import refuse_code_and_pickles

log = logging.getLogger(__name__)

TRAINER_STATE_FILE = "trainer_state.json"


@dataclass
class History:
    """What the curve and the report show; kept in checkpoints so a resumed run's curve is whole."""

    train: list[tuple[int, float]] = field(default_factory=list)
    eval: list[tuple[int, float]] = field(default_factory=list)
    tokens: int = 0
    train_seconds: float = 0.0


def run(spec: TrainSpec, ctx: RunContext) -> WorkerOutputs:
    torch.set_num_threads(spec.compute.threads)  # resolved from the job's cpus when the spec was parsed
    if spec.compute.device == "cuda" and not torch.cuda.is_available():
        raise JobError("train: device is 'cuda' but no CUDA device is visible; expected a GPU node "
                       "(resources.gpus > 0) or device: auto")
    device = torch.device("cuda" if spec.compute.device != "cpu" and torch.cuda.is_available() else "cpu")
    ctx.seed_everything()
    resume = Path(ctx.resume_checkpoint) if ctx.resume_checkpoint else None

    model, tokenizer, train_set, eval_set, base = load_model_and_data(spec, ctx, resume)
    model.to(device)
    eval_set = TokenBlocks(*(t[: spec.eval_batches * spec.batch_size] for t in
                             (eval_set.input_ids, eval_set.labels, eval_set.attention_mask)))
    baseline_ppl = unigram_ppl(train_set, eval_set, model.config.vocab_size)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, spec)
    history, start = History(), 0
    if resume is not None:
        start, history = restore_checkpoint(resume, optimizer)
        if ctx.resume_step is not None and ctx.resume_step != start:
            log.warning("resume_step %d differs from the checkpoint's step %d; using the checkpoint's",
                        ctx.resume_step, start)
        log.info("resumed from %s at step %d", resume, start)
    data_seed = ctx.seed
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if spec.compute.dtype == "bf16" else nullcontext())

    bar = ctx.progress(total=spec.steps, desc=f"train ({spec.mode.type})")
    bar.update(start)
    window_tokens, window_loss, window_start = 0, [], time.perf_counter()
    for step in range(start, spec.steps):  # `step` optimizer steps are done before this one
        t0 = time.perf_counter()
        lr = spec.optim.lr * lr_factor(step, spec)
        batch = train_set.batch(batch_indices(step, spec.batch_size, len(train_set), data_seed))
        loss, grad_norm = train_step(model, optimizer, {k: v.to(device) for k, v in batch.items()}, lr,
                                     spec.optim.grad_clip, autocast)
        done = step + 1
        tokens = int(batch["attention_mask"].sum())
        history.tokens += tokens
        history.train_seconds += time.perf_counter() - t0
        window_tokens += tokens
        window_loss.append(loss)
        if done % spec.log_every_steps == 0 or done == spec.steps:
            elapsed = time.perf_counter() - window_start
            mean_loss = sum(window_loss) / len(window_loss)
            history.train.append((done, mean_loss))
            ctx.log_metrics({"train/loss": mean_loss, "train/lr": lr, "train/grad_norm": grad_norm,
                             "train/tokens_per_s": window_tokens / max(elapsed, 1e-9)}, step=done)
            window_tokens, window_loss, window_start = 0, [], time.perf_counter()
        if done % spec.eval_every_steps == 0 or done == spec.steps:
            eval_loss = evaluate(model, eval_set, spec.batch_size, device, autocast)
            history.eval.append((done, eval_loss))
            ctx.log_metrics({"eval/loss": eval_loss, "eval/ppl": math.exp(eval_loss)}, step=done)
        if done % spec.checkpoint_every_steps == 0 and done < spec.steps:
            save_checkpoint(ctx, model, tokenizer, optimizer, done, data_seed, history)
        bar.update(1, loss=f"{loss:.3f}")
    bar.close()
    if not history.eval or history.eval[-1][0] != spec.steps:  # resumed from the last step
        eval_loss = evaluate(model, eval_set, spec.batch_size, device, autocast)
        history.eval.append((spec.steps, eval_loss))
    eval_loss = history.eval[-1][1]

    metrics = {"eval/loss": eval_loss, "eval/ppl": math.exp(eval_loss), "unigram_ppl": baseline_ppl,
               "parameters": float(parameters),
               "train/tokens_per_s": history.tokens / max(history.train_seconds, 1e-9),
               "train/loss": history.train[-1][1] if history.train else float("nan")}
    ctx.log_metrics({"unigram_ppl": baseline_ppl}, step=spec.steps)
    ctx.flush_metrics()
    model_dir = write_model(ctx.output_path("model"), model.to("cpu"), tokenizer, spec, parameters, base)
    curve = write_curve(ctx.output_path("curve.png"), history, baseline_ppl)
    report = ctx.output_path("report.json")
    report.write_text(json.dumps({"mode": spec.mode.type, "steps": spec.steps, "metrics": metrics,
                                  "train_examples": len(train_set), "eval_examples": len(eval_set),
                                  "eval_tokens": eval_set.target_count(), "history": {
                                      "train/loss": history.train, "eval/loss": history.eval}}, indent=2))
    return WorkerOutputs(
        artifacts={"model": OutputArtifact(model_dir, "model", {"parameters": parameters, "trained_steps": spec.steps}),
                   "curve": OutputArtifact(curve, "plot"), "report": OutputArtifact(report, "report")},
        metrics=metrics)


# -- inputs ----------------------------------------------------------------------------------------
def load_model_and_data(spec: TrainSpec, ctx: RunContext, resume: Path | None):
    """(model, tokenizer, train blocks, held-out blocks, base-model digest or None), fp32 on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.mode.type == "pretrain":
        corpus = ctx.input("corpus").path
        require_format(corpus, "text", "inputs.corpus")
        texts = read_texts(corpus, "train")
        if resume is not None:
            tokenizer = AutoTokenizer.from_pretrained(resume / "model", local_files_only=True, trust_remote_code=False)
        else:
            tokenizer = train_tokenizer(texts, spec.mode.tokenizer.vocab_size,
                                        model_max_length=spec.mode.arch.max_seq_len)
        model = (AutoModelForCausalLM.from_pretrained(resume / "model", dtype=torch.float32, local_files_only=True,
                                                      **SAFE_LOADING) if resume
                 else build_llama(spec.mode.arch, tokenizer))
        pack = lambda split_texts: pack_documents(encode_plain(tokenizer, split_texts), spec.seq_len,  # noqa: E731
                                                  tokenizer.bos_token_id, tokenizer.eos_token_id)
        train_set, eval_set = pack(texts), pack(read_texts(corpus, "calibration"))
        base = None
    else:
        data, base_input = ctx.input("data").path, ctx.input("model")
        require_format(data, "prompts", "inputs.data")
        source = resume / "model" if resume is not None else base_input.path
        refuse_code_and_pickles(source)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, local_files_only=True,
                                                     **SAFE_LOADING)
        make = lambda split: sft_examples(read_split(data, split), tokenizer, spec.seq_len,  # noqa: E731
                                          loss_on_prompt=spec.mode.loss_on_prompt)
        train_set, eval_set = make("train"), make("calibration")
        base = base_input.digest
    for name, blocks in (("train", train_set), ("calibration", eval_set)):
        if len(blocks) == 0 or blocks.target_count() == 0:
            raise DataError(f"train: the {name} split gives no {spec.seq_len}-token examples; "
                            "expected a larger split or a smaller seq_len")
    return model, tokenizer, train_set, eval_set, base


def require_format(path: Path, fmt: str, where: str) -> None:
    got = dataset_info(path)["format"]
    if got != fmt:
        raise DataError(f"{where}: dataset {path} has format {got!r}; expected {fmt!r}")


def build_llama(arch: LlamaArch, tokenizer):
    """A freshly initialised `LlamaForCausalLM` (seeded by the caller) sized by `arch`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    intermediate = arch.intermediate_size or 64 * math.ceil(arch.hidden_size * 8 / 3 / 64)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=arch.hidden_size, intermediate_size=intermediate,
        num_hidden_layers=arch.layers, num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads or arch.heads, max_position_embeddings=arch.max_seq_len,
        tie_word_embeddings=arch.tie_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


# -- optimisation ----------------------------------------------------------------------------------
def build_optimizer(model, spec: TrainSpec) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms or biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": spec.optim.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=spec.optim.lr, betas=(spec.optim.beta1, spec.optim.beta2))


def lr_factor(step: int, spec: TrainSpec) -> float:
    """Linear warmup over `warmup_steps`, then cosine decay to `min_lr_ratio` at the last step."""
    warmup, floor = spec.optim.warmup_steps, spec.optim.min_lr_ratio
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, spec.steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_step(model, optimizer, batch: dict[str, torch.Tensor], lr: float, grad_clip: float,
               autocast) -> tuple[float, float]:
    """One optimizer step on `batch` at learning rate `lr`; returns (mean token loss, grad norm before clipping)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    with autocast:
        nll, count = token_nll(model, batch)
    loss = nll / count
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item(), float(grad_norm)


def token_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token negative log-likelihood over labelled targets, and their count."""
    mask = batch["attention_mask"]
    logits = model(input_ids=batch["input_ids"], attention_mask=None if bool(mask.all()) else mask).logits
    targets = batch["labels"][:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                          ignore_index=IGNORE, reduction="sum")
    return nll, (targets != IGNORE).sum()


@torch.no_grad()
def evaluate(model, blocks: TokenBlocks, batch_size: int, device: torch.device, autocast) -> float:
    """Mean held-out token loss (nats) over all of `blocks`."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = {k: v.to(device) for k, v in blocks.batch(range(start, min(start + batch_size, len(blocks)))).items()}
        with autocast:
            nll, n = token_nll(model, batch)
        total, count = total + float(nll), count + int(n)
    return total / max(count, 1)


# -- checkpoints -----------------------------------------------------------------------------------
def save_checkpoint(ctx: RunContext, model, tokenizer, optimizer, step: int, data_seed: int,
                    history: History) -> Path:
    """Weights + tokenizer, optimizer state, RNG states and step, written atomically, then handed over."""
    state = {"step": step, "data_seed": data_seed, "data_order": "batch_indices(step, batch_size, n, data_seed)",
             "history": {"train": history.train, "eval": history.eval, "tokens": history.tokens,
                         "train_seconds": history.train_seconds}}
    last_eval = history.eval[-1][1] if history.eval else None
    return write_checkpoint(ctx, step, model, tokenizer, optimizer, TRAINER_STATE_FILE, state,
                            {"eval/loss": last_eval})


def restore_checkpoint(path: Path, optimizer) -> tuple[int, History]:
    """Load optimizer and RNG states (the model was loaded from `path/model`); returns (step, history)."""
    state = read_checkpoint(path, optimizer, TRAINER_STATE_FILE, "train")
    h = state["history"]
    history = History([tuple(x) for x in h["train"]], [tuple(x) for x in h["eval"]], h["tokens"], h["train_seconds"])
    return int(state["step"]), history


# -- outputs ---------------------------------------------------------------------------------------
def write_model(path: Path, model, tokenizer, spec: TrainSpec, parameters: int, base: str | None) -> Path:
    """A plain Hugging Face model directory (+ tokenizer, generation config, artifact.json)."""
    model.save_pretrained(path)
    save_tokenizer(tokenizer, path)
    meta: dict[str, Any] = {
        "kind": "model", "format": "hf", "architecture": model.config.architectures[0]
        if model.config.architectures else type(model).__name__,
        "parameters": parameters, "trained_steps": spec.steps, "tokenizer_vocab": len(tokenizer),
        "seq_len": spec.seq_len, "dtype": "float32", "train_mode": spec.mode.type,
        "layers": model.config.num_hidden_layers, "hidden_size": model.config.hidden_size}
    if base is not None:
        meta["base_model"] = base
    write_artifact_meta(path, meta)
    return path


def write_curve(path: Path, history: History, unigram: float) -> Path:
    """PNG of train and held-out loss against step, with the unigram baseline for scale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if history.train:
        ax.plot(*zip(*history.train), label="train loss")
    if history.eval:
        ax.plot(*zip(*history.eval), marker="o", label="held-out loss (calibration)")
    ax.axhline(math.log(unigram), color="grey", linestyle="--", label="unigram baseline")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
