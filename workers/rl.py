"""The `rl` job: GRPO-family optimisation of a policy with verifiable rewards, driven from one place.

Reads top to bottom: load the policy (or the checkpoint), the reference and the prompts; measure greedy
accuracy; start rollout workers (`ctx.actor_pool`); then every step sync weights to the workers,
sample groups (refilling groups without reward variance: DAPO's dynamic sampling), score rewards,
compute group advantages, run PPO epochs over mini-batches, log metrics and checkpoint. At the end
measure greedy accuracy again and write the model, rollout samples, a learning curve and a report.
All randomness is a pure function of (seed, step, round, chunk) or restored from the checkpoint, so a
resumed run on CPU ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bitsmith.platform.context import OutputArtifact, RunContext, WorkerOutputs
from bitsmith.platform.errors import DataError
from bitsmith.platform.specs.rl import RLSpec
from bitsmith.workers.data.batches import permuted_stream
from bitsmith.workers.data.datasets import dataset_info, read_split
from bitsmith.workers.evaluators.generation import generate_samples
from bitsmith.workers.grpo.advantages import apply_polarity, group_advantages, sanity_rewards, zero_variance_groups
from bitsmith.workers.grpo.checkpoint import LoopState, restore_checkpoint, save_checkpoint
from bitsmith.workers.grpo.loss import kl_estimate, policy_loss
from bitsmith.workers.grpo.outputs import write_curve, write_model
from bitsmith.workers.grpo.rewards import reward_identity, score
from bitsmith.workers.grpo.rollout import RolloutBatch, RolloutWorker, response_logprobs
from bitsmith.workers.models import load_model_and_tokenizer, resolve_device

log = logging.getLogger(__name__)


@dataclass
class Group:
    """One prompt's sampled responses and their rewards."""

    prompt_index: int
    prompt_ids: list[int]
    responses: list[list[int]]
    rollout_logp: list[list[float]]
    truncated: list[bool]
    texts: list[str] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    correct: list[float] = field(default_factory=list)


def run(spec: RLSpec, ctx: RunContext) -> WorkerOutputs:
    threads = spec.compute.threads
    torch.set_num_threads(threads)
    device = resolve_device(spec.compute.device)
    ctx.seed_everything()
    resume = Path(ctx.resume_checkpoint) if ctx.resume_checkpoint else None

    # -- inputs -----------------------------------------------------------------------------------
    policy_dir, data_dir = ctx.input("policy").path, ctx.input("data").path
    if dataset_info(data_dir)["format"] != "prompts":
        raise DataError(f"inputs.data: dataset {data_dir} has format {dataset_info(data_dir)['format']!r}; "
                        "expected 'prompts'")
    records = read_split(data_dir, "train")[: spec.data.limit_prompts]
    test_records = read_split(data_dir, "test")[: spec.data.eval_limit]
    if not records:
        raise DataError(f"inputs.data: {data_dir} has no train prompts; expected a non-empty train split")
    model, tokenizer = load_model_and_tokenizer(resume / "model" if resume else policy_dir, device)
    model.requires_grad_(True)
    reference = None
    if spec.loss.kl.coef > 0:
        ref_dir = ctx.inputs["reference"].path if "reference" in ctx.inputs else policy_dir
        reference, _ = load_model_and_tokenizer(ref_dir, device)
        reference.requires_grad_(False)
    prompt_ids = [tokenizer(r["prompt"])["input_ids"] for r in records]
    answers = [r["answer"] for r in records]
    train_eval = records[: spec.data.eval_limit]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.optim.lr,
                                  betas=(spec.optim.beta1, spec.optim.beta2), weight_decay=spec.optim.weight_decay)
    rewards_used = reward_identity([t.name for t in spec.rewards] + [spec.accuracy_reward])

    if resume is not None:
        state = restore_checkpoint(resume, optimizer)
        if ctx.resume_step is not None and ctx.resume_step != state.step:
            log.warning("resume_step %d differs from the checkpoint's step %d; using the checkpoint's",
                        ctx.resume_step, state.step)
        log.info("resumed from %s at step %d", resume, state.step)
    else:
        state = LoopState(before={"train": greedy_accuracy(model, tokenizer, train_eval, spec),
                                  "test": greedy_accuracy(model, tokenizer, test_records, spec)})
        ctx.log_metrics({"eval/train_accuracy": state.before["train"], "eval/test_accuracy": state.before["test"]},
                        step=0)
    log.info("greedy accuracy before RL: train %.3f, test %.3f", state.before["train"], state.before["test"])

    # -- the loop -----------------------------------------------------------------------------------
    quant = spec.rollout.quantize.model_dump() if spec.rollout.quantize is not None else None
    with ctx.actor_pool(RolloutWorker, spec.rollout.workers, str(policy_dir),
                        cpus_per_actor=spec.rollout.cpus_per_worker, threads=spec.rollout.threads_per_worker,
                        temperature=spec.sampling.temperature, top_p=spec.sampling.top_p,
                        max_new_tokens=spec.sampling.max_new_tokens, quantize=quant) as pool:
        torch.set_num_threads(threads)  # in-process workers set their own count on this process
        bar = ctx.progress(total=spec.steps, desc="rl")
        bar.update(state.step)
        for step in range(state.step, spec.steps):
            metrics = train_step(spec, ctx.seed, step, state, model, reference, optimizer, tokenizer, pool,
                                 prompt_ids, answers)
            state.step = step + 1
            ctx.log_metrics(metrics, step=state.step)
            state.history.append({k: metrics[k] for k in ("reward/mean", "rollout/accuracy")})
            if state.step % spec.checkpoint_every_steps == 0 and state.step < spec.steps:
                save_checkpoint(ctx, model, tokenizer, optimizer, state)
            bar.update(1, reward=f"{metrics['reward/mean']:.3f}")
        bar.close()

    after = {"train": greedy_accuracy(model, tokenizer, train_eval, spec),
             "test": greedy_accuracy(model, tokenizer, test_records, spec)}
    log.info("greedy accuracy after RL: train %.3f, test %.3f", after["train"], after["test"])
    ctx.log_metrics({"eval/train_accuracy": after["train"], "eval/test_accuracy": after["test"]}, step=spec.steps)
    ctx.flush_metrics()

    # -- outputs ----------------------------------------------------------------------------------
    metrics = {"accuracy/train_before": state.before["train"], "accuracy/train_after": after["train"],
               "accuracy/test_before": state.before["test"], "accuracy/test_after": after["test"],
               "reward/mean_last": state.history[-1]["reward/mean"] if state.history else float("nan"),
               "steps": float(spec.steps), "train_prompts": float(len(records))}
    rl_meta = {"rewards": rewards_used, "accuracy_reward": spec.accuracy_reward, "steps": spec.steps,
               "reward_sanity": spec.reward_sanity}
    model_dir = write_model(ctx.output_path("model"), model.to("cpu"), tokenizer, ctx.input("policy").digest,
                            rl_meta)
    samples = ctx.output_path("samples.jsonl")
    samples.write_text("".join(json.dumps(s, sort_keys=True) + "\n" for s in state.samples))
    curve = write_curve(ctx.output_path("curve.png"), state.history, state.before, after)
    report = ctx.output_path("report.json")
    report.write_text(json.dumps({"metrics": metrics, "rewards": rewards_used, "accuracy_before": state.before,
                                  "accuracy_after": after, "history": state.history,
                                  "config": spec.model_dump(mode="json")}, indent=2, sort_keys=True))
    return WorkerOutputs(
        artifacts={"model": OutputArtifact(model_dir, "model", {"trained_steps": spec.steps, "rl": rl_meta}),
                   "samples": OutputArtifact(samples, "samples", {"records": len(state.samples)}),
                   "curve": OutputArtifact(curve, "plot"),
                   "report": OutputArtifact(report, "report", {"rewards": rewards_used})},
        metrics=metrics)


# -- one step ----------------------------------------------------------------------------------------
def train_step(spec: RLSpec, seed: int, step: int, state: LoopState, model, reference, optimizer, tokenizer,
               pool, prompt_ids: list[list[int]], answers: list[str]) -> dict[str, float]:
    """Sync, roll out (with dynamic sampling), score, compute advantages, update; returns the step's metrics."""
    times: dict[str, float] = {}
    t_step = t = time.perf_counter()
    sync = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    quant_stats = pool.call_all("load_weights", sync, step)[0]
    times["sync"] = time.perf_counter() - t

    kept, generated, rounds, times["rollout"], times["reward"] = [], [], 0, 0.0, 0.0
    for rnd in range(spec.sampling.max_sampling_rounds if spec.sampling.dynamic_sampling else 1):
        rounds += 1
        t = time.perf_counter()
        groups = roll_out(spec, seed, step, rnd, state, pool, prompt_ids)
        times["rollout"] += time.perf_counter() - t
        t = time.perf_counter()
        score_groups(spec, seed, step, rnd, groups, tokenizer, answers)
        times["reward"] += time.perf_counter() - t
        generated += groups
        flat = torch.tensor([g.rewards for g in groups], dtype=torch.float64)
        zero_var = zero_variance_groups(flat).tolist()
        kept += [g for g, z in zip(groups, zero_var) if not (spec.sampling.dynamic_sampling and z)]
        if len(kept) >= spec.sampling.prompts_per_step:
            break
    kept = kept[: spec.sampling.prompts_per_step]
    metrics = rollout_metrics(generated, kept, rounds)
    metrics.update({f"rollout/{k}": v for k, v in quant_stats.items()})
    if step % spec.samples_every_steps == 0:
        kept_ids = {id(g) for g in kept}
        state.samples += [{"step": step + 1, "prompt": tokenizer.decode(g.prompt_ids, skip_special_tokens=True),
                           "answer": answers[g.prompt_index], "response": text, "reward": r, "correct": c,
                           "truncated": tr, "kept": id(g) in kept_ids}
                          for g in generated for text, r, c, tr in zip(g.texts, g.rewards, g.correct, g.truncated)]
    if kept:
        t = time.perf_counter()
        metrics.update(update_policy(spec, seed, step, model, reference, optimizer, tokenizer, kept))
        times["update"] = time.perf_counter() - t
    else:
        log.warning("step %d: every sampled group had equal rewards; no update", step + 1)
    times["step"] = time.perf_counter() - t_step
    tokens = sum(len(r) for g in generated for r in g.responses)
    metrics.update({f"timing/{k}_s": v for k, v in times.items()})
    metrics["perf/tokens_per_s"] = tokens / max(times["step"], 1e-9)
    metrics["perf/samples_per_s"] = sum(len(g.responses) for g in generated) / max(times["step"], 1e-9)
    return metrics


def roll_out(spec: RLSpec, seed: int, step: int, rnd: int, state: LoopState, pool,
             prompt_ids: list[list[int]]) -> list[Group]:
    """One generation round: `prompts_per_step` prompts, split into one chunk per rollout worker."""
    count, n = spec.sampling.prompts_per_step, spec.sampling.group_size
    indices = prompt_order(state.cursor, count, len(prompt_ids), seed)
    state.cursor += count
    size = -(-count // pool.size)
    chunks = [indices[i:i + size] for i in range(0, count, size)]
    jobs = [{"prompts": [prompt_ids[i] for i in chunk], "n": n, "seed": mix_seed(seed, "rollout", step, rnd, c)}
            for c, chunk in enumerate(chunks)]
    groups = []
    for chunk, result in zip(chunks, pool.map("generate", jobs)):
        for k, index in enumerate(chunk):
            part = slice(k * n, (k + 1) * n)
            groups.append(Group(index, prompt_ids[index], result["responses"][part], result["logprobs"][part],
                                result["truncated"][part]))
    return groups


def mix_seed(*parts: Any) -> int:
    """A 63-bit seed from the parts (stable across processes, unlike `hash`)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


def prompt_order(cursor: int, count: int, n: int, seed: int) -> list[int]:
    """Prompt indices `cursor .. cursor + count` of an endless stream of seeded epoch permutations."""
    return permuted_stream(cursor, count, n, lambda epoch: mix_seed(seed, "epoch", epoch))


def score_groups(spec: RLSpec, seed: int, step: int, rnd: int, groups: list[Group], tokenizer,
                 answers: list[str]) -> None:
    """Decode, score the reward terms and correctness, and apply the reward-sanity control (in place)."""
    texts = tokenizer.batch_decode([r for g in groups for r in g.responses], skip_special_tokens=True)
    golds = [answers[g.prompt_index] for g in groups for _ in g.responses]
    totals, per_term = score(texts, golds, [(t.name, t.weight) for t in spec.rewards])
    correct = per_term.get(spec.accuracy_reward) or score(texts, golds, [(spec.accuracy_reward, 1.0)])[0]
    rewards = torch.tensor(totals, dtype=torch.float64).view(len(groups), -1)
    rewards = sanity_rewards(rewards, spec.reward_sanity,
                             torch.Generator().manual_seed(mix_seed(seed, "sanity", step, rnd)))
    n = spec.sampling.group_size
    for i, g in enumerate(groups):
        g.texts, g.correct, g.rewards = texts[i * n:(i + 1) * n], correct[i * n:(i + 1) * n], rewards[i].tolist()


def rollout_metrics(generated: list[Group], kept: list[Group], rounds: int) -> dict[str, float]:
    rewards = torch.tensor([r for g in generated for r in g.rewards], dtype=torch.float64)
    lengths = torch.tensor([len(r) for g in generated for r in g.responses], dtype=torch.float64)
    flat = torch.tensor([g.rewards for g in generated], dtype=torch.float64)
    return {"reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "rollout/accuracy": sum(c for g in generated for c in g.correct) / max(len(rewards), 1),
            "rollout/zero_variance_frac": float(zero_variance_groups(flat).double().mean()),
            "rollout/response_length": float(lengths.mean()),
            "rollout/truncation_rate": sum(t for g in generated for t in g.truncated) / max(len(rewards), 1),
            "rollout/sampling_rounds": float(rounds), "rollout/kept_groups": float(len(kept))}


def update_policy(spec: RLSpec, seed: int, step: int, model, reference, optimizer, tokenizer,
                  kept: list[Group]) -> dict[str, float]:
    """Advantages from the kept groups, then `ppo.epochs` passes of `ppo.minibatches` optimizer steps."""
    loss_cfg, temperature = spec.loss, spec.sampling.temperature
    device = next(model.parameters()).device
    batch = RolloutBatch.pack([g.prompt_ids for g in kept], [r for g in kept for r in g.responses],
                              [i for i, g in enumerate(kept) for _ in g.responses], tokenizer.pad_token_id).to(device)
    response_mask = batch.response_mask
    loss_mask = response_mask.clone()
    if spec.sampling.overlong_filter:
        loss_mask[torch.tensor([t for g in kept for t in g.truncated], device=device)] = 0
    rollout_logp = torch.zeros(response_mask.shape)
    for i, lp in enumerate(lp for g in kept for lp in g.rollout_logp):
        rollout_logp[i, :len(lp)] = torch.tensor(lp)
    rollout_logp = rollout_logp.to(device)
    n_samples = response_mask.shape[0]
    single_update = spec.ppo.epochs * spec.ppo.minibatches == 1
    with torch.no_grad():
        old_logp = None if single_update else response_logprobs(model, batch, temperature=temperature)[0]
        ref_logp = (response_logprobs(reference, batch, temperature=temperature)[0]
                    if reference is not None else None)
    rewards = torch.tensor([g.rewards for g in kept], dtype=torch.float32, device=device)
    kl_in_reward = ref_logp is not None and loss_cfg.kl.placement == "reward"
    if kl_in_reward:  # r_i <- r_i - beta * sum_t KL_t, with the behaviour policy's log-probs
        behaviour = old_logp if old_logp is not None else rollout_logp
        kl_tokens = kl_estimate(behaviour, ref_logp, loss_cfg.kl.estimator) * response_mask
        rewards = rewards - loss_cfg.kl.coef * kl_tokens.sum(1).view_as(rewards)
    advantages = apply_polarity(group_advantages(rewards, loss_cfg.normalize_std, loss_cfg.adv_eps),
                                loss_cfg.polarity).reshape(-1)

    generator = torch.Generator().manual_seed(mix_seed(seed, "ppo", step))
    sums: dict[str, float] = {}
    updates = 0
    learner_logp = old_logp if old_logp is not None else torch.zeros_like(rollout_logp)
    for _ in range(spec.ppo.epochs):
        for mb in torch.randperm(n_samples, generator=generator).chunk(spec.ppo.minibatches):
            mb = mb.to(device)
            logp, entropy = response_logprobs(model, batch, mb, temperature, with_entropy=True)
            old = logp.detach() if old_logp is None else old_logp[mb]
            parts = policy_loss(
                logp, old, advantages[mb], loss_mask[mb], clip_eps_low=loss_cfg.clip_eps_low,
                clip_eps_high=loss_cfg.clip_eps_high, dual_clip_c=loss_cfg.dual_clip_c,
                aggregation=loss_cfg.aggregation, norm_tokens=spec.sampling.max_new_tokens,
                ref_logp=ref_logp[mb] if ref_logp is not None else None,
                kl_coef=0.0 if kl_in_reward else loss_cfg.kl.coef, kl_estimator=loss_cfg.kl.estimator,
                entropy=entropy, entropy_coef=loss_cfg.entropy_coef,
                rollout_logp=rollout_logp[mb], tis_cap=loss_cfg.tis_cap)
            lr = spec.optim.lr * min(1.0, (step + 1) / spec.optim.warmup_steps) if spec.optim.warmup_steps \
                else spec.optim.lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            parts.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), spec.optim.grad_clip)
            optimizer.step()
            if old_logp is None:
                learner_logp[mb] = old  # single update: the learner's log-probs before it
            updates += 1
            values = {"loss": parts.loss.detach(), "pg_loss": parts.pg_loss, "kl": parts.kl,
                      "entropy": parts.entropy, "clip_frac_low": parts.clip_frac_low,
                      "clip_frac_high": parts.clip_frac_high, "dual_clip_frac": parts.dual_clip_frac,
                      "ratio_mean": parts.ratio_mean, "tis_weight_mean": parts.tis_weight_mean,
                      "grad_norm": grad_norm, "lr": torch.tensor(lr)}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    metrics = {f"actor/{k}": v / updates for k, v in sums.items()}
    diff = (learner_logp - rollout_logp) * response_mask
    tokens = response_mask.sum().clamp(min=1)
    metrics["rollout/logprob_mismatch"] = float(diff.abs().sum() / tokens)
    metrics["rollout/mismatch_kl"] = float((kl_estimate(rollout_logp, learner_logp, "k3") * response_mask).sum()
                                           / tokens)
    metrics["actor/advantage_abs_mean"] = float(advantages.abs().mean())
    metrics["actor/samples"] = float(n_samples)
    return metrics


# -- evaluation ----------------------------------------------------------------------------------------
def greedy_accuracy(model, tokenizer, records: list[dict[str, Any]], spec: RLSpec) -> float:
    """Fraction of `records` whose greedy completion scores 1 on the accuracy reward."""
    if not records:
        return float("nan")
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]):
        outputs = generate_samples(model, tokenizer, [r["prompt"] for r in records], n_samples=1, temperature=0.0,
                                   max_new_tokens=spec.sampling.max_new_tokens, batch_size=64)
    model.train(was_training)
    values, _ = score([o[0] for o in outputs], [r["answer"] for r in records], [(spec.accuracy_reward, 1.0)])
    return sum(values) / len(values)
