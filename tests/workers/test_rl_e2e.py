"""The `rl` job end to end on CPU: GRPO lifts greedy accuracy where a shuffled-reward control does not,
same seed gives the same logs, a resumed run ends bit-identical, quantized rollouts show their mismatch."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bitsmith.platform.context import local_context
from bitsmith.platform.specs.rl import RLSpec
from bitsmith.platform.specs.train import TrainSpec
from bitsmith.workers import rl, train
from bitsmith.workers.data.arithmetic import generate_arithmetic

# One-digit additions: 100 problems, 20 held out for test, 10 for calibration (unused by rl).
ARITHMETIC = {"n_train": 200, "n_test": 20, "n_calibration": 10, "min_operand": 0, "max_operand": 9,
              "operations": ["+"], "seed": 0}
SFT = {"kind": "train", "inputs": {"data": "d", "model": "m"}, "mode": {"type": "sft"},
       "optim": {"lr": 3e-3, "warmup_steps": 10}, "steps": 60, "batch_size": 16, "seq_len": 32,
       "eval_every_steps": 1000, "checkpoint_every_steps": 1000, "compute": {"threads": 1}}
TIMING = ("timing/", "perf/")


@pytest.fixture(scope="module")
def warm_start(tmp_path_factory, trained_lm) -> tuple[Path, Path]:
    """(SFT-warm-started policy dir, one-digit arithmetic dataset dir): a short SFT of `trained_lm`."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rl-warm-start")
    data = generate_arithmetic(root / "data", **ARITHMETIC)
    ctx, _ = local_context(root / "sft", {"data": data, "model": trained_lm})
    out = train.run(TrainSpec.model_validate(SFT), ctx)
    return out.artifacts["model"].path, data


def rl_spec(**overrides) -> RLSpec:
    data = {"kind": "rl", "inputs": {"policy": "p", "data": "d"}, "data": {"limit_prompts": 16, "eval_limit": 32},
            "sampling": {"group_size": 8, "prompts_per_step": 16, "max_new_tokens": 4},
            "optim": {"lr": 1e-3}, "steps": 60, "checkpoint_every_steps": 1000, "compute": {"threads": 1}}
    data.update(overrides)
    return RLSpec.model_validate(data)


def run_rl(path: Path, warm_start, spec: RLSpec, seed: int = 0, **ctx_args):
    policy, data = warm_start
    ctx, rec = local_context(path, {"policy": policy, "data": data}, seed=seed, **ctx_args)
    return rl.run(spec, ctx), rec, ctx


def semantic_log(rec) -> list[tuple[str, int | None, float]]:
    return [m for m in rec.metrics if not m[0].startswith(TIMING)]


def test_grpo_raises_greedy_accuracy_and_shuffled_reward_control_does_not(tmp_path, warm_start):
    out, rec, ctx = run_rl(tmp_path / "grpo", warm_start, rl_spec())
    control, control_rec, _ = run_rl(tmp_path / "control", warm_start, rl_spec(reward_sanity="shuffled"))
    m, c = out.metrics, control.metrics
    assert m["accuracy/train_before"] == c["accuracy/train_before"]  # same start
    assert m["accuracy/train_after"] >= m["accuracy/train_before"] + 0.4, (m, c)
    assert c["accuracy/train_after"] <= 0.2, c
    sampled = rec.metric("rollout/accuracy")
    assert sum(sampled[-5:]) / 5 > sum(sampled[:5]) / 5 + 0.3
    assert sum(rec.metric("rollout/sampling_rounds")) > 40  # dynamic sampling refilled some steps

    keys = {k for k, _, _ in rec.metrics}
    assert keys >= {"reward/mean", "reward/std", "rollout/accuracy", "rollout/zero_variance_frac",
                    "rollout/response_length", "rollout/truncation_rate", "actor/entropy", "actor/clip_frac_low",
                    "actor/clip_frac_high", "actor/kl", "actor/grad_norm", "rollout/logprob_mismatch",
                    "timing/rollout_s", "timing/update_s", "timing/sync_s", "perf/tokens_per_s",
                    "eval/train_accuracy"}
    assert {n: a.kind for n, a in out.artifacts.items()} == {"model": "model", "samples": "samples",
                                                            "curve": "plot", "report": "report"}
    assert out.artifacts["curve"].path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.artifacts["report"].path.read_text())
    assert set(report["rewards"]) == {"exact_numeric"} and len(report["rewards"]["exact_numeric"]) == 64
    assert report["config"]["loss"]["aggregation"] == "token-mean"
    samples = [json.loads(line) for line in out.artifacts["samples"].path.read_text().splitlines()]
    assert samples and {"prompt", "answer", "response", "reward", "correct", "step"} <= set(samples[0])
    meta = json.loads((out.artifacts["model"].path / "artifact.json").read_text())
    assert meta["kind"] == "model" and meta["base_model"] == ctx.input("policy").digest
    assert meta["rl"]["rewards"] == report["rewards"]


def test_same_seed_gives_identical_logs_with_every_switch_on(tmp_path, warm_start):
    spec = rl_spec(steps=3, data={"limit_prompts": 8, "eval_limit": 8},
                   sampling={"group_size": 4, "prompts_per_step": 4, "max_new_tokens": 4, "overlong_filter": True},
                   loss={"clip_eps_high": 0.28, "dual_clip_c": 3.0, "kl": {"coef": 0.05, "estimator": "k3"},
                         "entropy_coef": 0.01, "tis_cap": 2.0, "aggregation": "seq-mean-token-mean"},
                   ppo={"epochs": 2, "minibatches": 2}, rollout={"workers": 2})
    _, a, _ = run_rl(tmp_path / "a", warm_start, spec)
    _, b, _ = run_rl(tmp_path / "b", warm_start, spec)
    _, other, _ = run_rl(tmp_path / "c", warm_start, spec, seed=1)
    assert semantic_log(a) == semantic_log(b)
    assert semantic_log(a) != semantic_log(other)
    assert all(math.isfinite(v) for _, _, v in a.metrics)
    assert max(a.metric("actor/kl")) > 0 and len(a.metric("actor/loss")) == 3


class SimulatedCrash(Exception):
    pass


def test_resumed_run_is_bit_identical_to_uninterrupted(tmp_path, warm_start):
    from safetensors.torch import load_file

    spec = rl_spec(steps=4, checkpoint_every_steps=2, data={"limit_prompts": 8, "eval_limit": 8},
                   sampling={"group_size": 4, "prompts_per_step": 4, "max_new_tokens": 4},
                   ppo={"epochs": 2, "minibatches": 2}, loss={"kl": {"coef": 0.05, "placement": "reward"}})
    full, full_rec, _ = run_rl(tmp_path / "full", warm_start, spec)
    assert [s for _, s, _ in full_rec.checkpoints] == [2]

    policy, data = warm_start
    crashed, crash_rec = local_context(tmp_path / "crash", {"policy": policy, "data": data})

    def crash_at_checkpoint(path, step, meta):
        crash_rec.checkpoints.append((path, step, meta))
        raise SimulatedCrash(step)

    crashed.checkpoint_sink = crash_at_checkpoint
    with pytest.raises(SimulatedCrash):
        rl.run(spec, crashed)
    (checkpoint, step, _), = crash_rec.checkpoints
    resumed, resumed_rec, _ = run_rl(tmp_path / "resumed", warm_start, spec, resume_checkpoint=checkpoint,
                                     resume_step=step)
    a = load_file(full.artifacts["model"].path / "model.safetensors")
    b = load_file(resumed.artifacts["model"].path / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics == full.metrics
    after = [m for m in semantic_log(full_rec) if m[1] is not None and m[1] > step]
    assert [m for m in semantic_log(resumed_rec) if m[1] is not None and m[1] > step] == after
    assert (full.artifacts["samples"].path.read_text() == resumed.artifacts["samples"].path.read_text())


def test_quantized_rollouts_show_logprob_mismatch_and_one_example_rlvr_runs(tmp_path, warm_start):
    common = {"steps": 1, "data": {"limit_prompts": 1, "eval_limit": 4},
              "sampling": {"group_size": 8, "prompts_per_step": 2, "max_new_tokens": 4, "dynamic_sampling": False},
              "loss": {"polarity": "negative", "aggregation": "seq-mean-token-sum-norm", "normalize_std": False}}
    _, plain, _ = run_rl(tmp_path / "fp", warm_start, rl_spec(**common))
    quant = {"workers": 1, "quantize": {"type": "rtn", "bits": 2, "group_size": 32}}
    _, q, _ = run_rl(tmp_path / "q", warm_start, rl_spec(**{**common, "rollout": quant,
                                                        "loss": {**common["loss"], "tis_cap": 2.0}}))
    assert plain.metric("rollout/logprob_mismatch")[0] < 1e-3
    assert q.metric("rollout/logprob_mismatch")[0] > 10 * plain.metric("rollout/logprob_mismatch")[0]
    assert q.metric("rollout/quant_rmse")[0] > 0 and q.metric("actor/tis_weight_mean")[0] <= 2.0
    assert plain.metric("actor/samples") == [16.0]  # one prompt, two groups of it


@pytest.mark.ray
def test_ray_rollout_actors_give_the_same_log_as_in_process(tmp_path, warm_start):
    import ray

    from bitsmith.platform.scheduler.actors import ray_actor_pool

    spec = rl_spec(steps=2, data={"limit_prompts": 8, "eval_limit": 4},
                   sampling={"group_size": 4, "prompts_per_step": 4, "max_new_tokens": 4},
                   rollout={"workers": 2, "cpus_per_worker": 0.5})
    _, local, _ = run_rl(tmp_path / "local", warm_start, spec)
    policy, data = warm_start
    ctx, remote = local_context(tmp_path / "ray", {"policy": policy, "data": data})
    ctx.actor_pool_factory = ray_actor_pool
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        rl.run(spec, ctx)
    finally:
        ray.shutdown()
    assert semantic_log(remote) == semantic_log(local)
