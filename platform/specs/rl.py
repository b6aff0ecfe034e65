"""Spec of `rl` jobs: GRPO-family policy optimisation of a model artifact with verifiable rewards.

Every switch of the loss lives here with the common recipe as its default (token-mean aggregation,
group-std normalisation on, clip epsilon 0.2, KL off); the stored spec is the fully resolved
configuration of a run.
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .common import ArtifactRef, JobSpecBase, RLCompute, StrictModel
from .kinds import DATASET_KINDS, HF_MODEL_KINDS

# Names of the verifiable rewards in `bitsmith.workers.grpo.rewards.REWARDS` (a test keeps them equal).
RewardName = Literal["exact_numeric", "boxed", "format"]
Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


class RLInputs(StrictModel):
    policy: ArtifactRef = Field(description="model artifact to start from (the initial policy)")
    data: ArtifactRef = Field(description="prompts dataset artifact: split `train` for RL, `test` held out")
    reference: ArtifactRef | None = Field(None, description="model artifact for the KL term; default: the policy")


class DataConfig(StrictModel):
    limit_prompts: int | None = Field(None, ge=1, description="use only the first N training prompts "
                                                              "(1 = one-example RLVR)")
    eval_limit: int | None = Field(64, ge=1, description="prompts per greedy accuracy evaluation (train and test)")


class RewardTerm(StrictModel):
    name: RewardName = "exact_numeric"
    weight: float = 1.0


class SamplingConfig(StrictModel):
    group_size: int = Field(8, ge=2, description="responses sampled per prompt (the GRPO group)")
    prompts_per_step: int = Field(16, ge=1, description="groups per optimisation step (after filtering)")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(16, ge=1, description="response length cap (also Dr. GRPO's constant normaliser)")
    dynamic_sampling: bool = Field(True, description="DAPO: drop groups whose rewards are all equal and refill")
    max_sampling_rounds: int = Field(4, ge=1, description="generation rounds per step before giving up refilling")
    overlong_filter: bool = Field(False, description="DAPO: truncated responses carry no loss")


class KLConfig(StrictModel):
    coef: float = Field(0.0, ge=0, description="beta; 0 turns the KL term off (no reference model is loaded)")
    estimator: Literal["k1", "k2", "k3"] = "k3"
    placement: Literal["loss", "reward"] = Field("loss", description="add beta*KL to the loss, or subtract "
                                                                    "beta*sum_t KL_t from each sequence's reward")


class LossConfig(StrictModel):
    clip_eps_low: float = Field(0.2, ge=0, lt=1)
    clip_eps_high: float = Field(0.2, ge=0, description="DAPO's clip-higher uses 0.28")
    dual_clip_c: float | None = Field(None, gt=1, description="dual clip for negative advantages (e.g. 3)")
    aggregation: Aggregation = "token-mean"
    normalize_std: bool = Field(True, description="divide advantages by the group std (off = Dr. GRPO)")
    adv_eps: float = Field(1e-6, gt=0)
    kl: KLConfig = KLConfig()
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus coefficient")
    polarity: Literal["both", "positive", "negative"] = Field(
        "both", description="train on samples with positive advantage, negative advantage, or both")
    tis_cap: float | None = Field(None, gt=0, description="truncated importance sampling: weight tokens by "
                                                          "min(pi_learner / pi_rollout, cap)")


class RTNRolloutQuant(StrictModel):
    """Rollouts from a round-to-nearest quantized copy of the synced weights (dequantized in the worker)."""

    type: Literal["rtn"] = "rtn"
    bits: int = Field(4, ge=2, le=8)
    group_size: int | None = Field(32, ge=1, description="columns per group; null = per-channel")
    symmetric: bool = False


class RolloutConfig(StrictModel):
    workers: int = Field(1, ge=1, le=64, description="rollout actors")
    cpus_per_worker: float = Field(1.0, gt=0)
    threads_per_worker: int = Field(1, ge=1)
    quantize: Annotated[RTNRolloutQuant, Field(discriminator="type")] | None = None


class PPOConfig(StrictModel):
    epochs: int = Field(1, ge=1, description="passes over one rollout batch")
    minibatches: int = Field(1, ge=1, description="optimizer steps per pass")


class RLOptimConfig(StrictModel):
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    warmup_steps: int = Field(0, ge=0)


class RLSpec(JobSpecBase):
    INPUT_KINDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "policy": HF_MODEL_KINDS, "data": DATASET_KINDS, "reference": HF_MODEL_KINDS}

    kind: Literal["rl"] = "rl"
    inputs: RLInputs
    data: DataConfig = DataConfig()
    rewards: tuple[RewardTerm, ...] = (RewardTerm(),)
    accuracy_reward: RewardName = Field("exact_numeric", description="the reward whose value 1 means correct")
    reward_sanity: Literal["none", "random", "inverted", "shuffled"] = Field(
        "none", description="replace rewards by random, inverted or shuffled ones (a control run)")
    sampling: SamplingConfig = SamplingConfig()
    loss: LossConfig = LossConfig()
    ppo: PPOConfig = PPOConfig()
    optim: RLOptimConfig = RLOptimConfig()
    rollout: RolloutConfig = RolloutConfig()
    steps: int = Field(100, ge=1)
    checkpoint_every_steps: int = Field(50, ge=1)
    samples_every_steps: int = Field(10, ge=1, description="rollout samples written to `samples` every N steps")
    compute: RLCompute = RLCompute()  # of the learner

    @model_validator(mode="after")
    def _consistent(self) -> "RLSpec":
        if not self.rewards:
            raise ValueError("rewards: empty; expected at least one reward term, e.g. [{name: exact_numeric}]")
        batch = self.sampling.prompts_per_step * self.sampling.group_size
        if self.ppo.minibatches > batch:
            raise ValueError(f"ppo.minibatches {self.ppo.minibatches} exceeds the {batch} samples per step")
        return self
