"""Spec of `train` jobs: pretrain a small Llama-architecture LM, or fine-tune (SFT) a model artifact."""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .common import ArtifactRef, JobSpecBase, StrictModel, TrainCompute
from .kinds import DATASET_KINDS, HF_MODEL_KINDS


class TrainInputs(StrictModel):
    corpus: ArtifactRef | None = Field(None, description="text dataset artifact (pretraining)")
    data: ArtifactRef | None = Field(None, description="prompt/answer JSONL dataset artifact (SFT)")
    model: ArtifactRef | None = Field(None, description="model artifact to fine-tune (SFT)")


class LlamaArch(StrictModel):
    """A Llama-architecture causal LM built from scratch."""

    layers: int = Field(4, ge=1, le=128)
    hidden_size: int = Field(256, ge=8)
    heads: int = Field(4, ge=1)
    kv_heads: int | None = Field(None, ge=1, description="grouped-query heads; default = heads")
    intermediate_size: int | None = Field(None, ge=8, description="default: 8/3 * hidden, rounded to 64")
    max_seq_len: int = Field(512, ge=16)
    tie_embeddings: bool = False

    @model_validator(mode="after")
    def _heads_divide(self) -> "LlamaArch":
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by heads {self.heads}")
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} must be divisible by kv_heads {self.kv_heads}")
        return self


class TokenizerConfig(StrictModel):
    vocab_size: int = Field(4096, ge=300, le=262144, description="byte-level BPE vocabulary size")


class OptimConfig(StrictModel):
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decay floor, as a fraction of lr")
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)


class PretrainMode(StrictModel):
    type: Literal["pretrain"] = "pretrain"
    arch: LlamaArch = LlamaArch()
    tokenizer: TokenizerConfig = TokenizerConfig()


class SFTMode(StrictModel):
    type: Literal["sft"] = "sft"
    loss_on_prompt: bool = Field(False, description="also train on prompt tokens (default: answer only)")


TrainMode = Annotated[PretrainMode | SFTMode, Field(discriminator="type")]


class TrainSpec(JobSpecBase):
    INPUT_KINDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "corpus": DATASET_KINDS, "data": DATASET_KINDS, "model": HF_MODEL_KINDS}

    kind: Literal["train"] = "train"
    inputs: TrainInputs = TrainInputs()
    mode: TrainMode = PretrainMode()
    optim: OptimConfig = OptimConfig()
    steps: int = Field(600, ge=1)
    batch_size: int = Field(16, ge=1, description="sequences per optimizer step")
    seq_len: int = Field(128, ge=8)
    compute: TrainCompute = TrainCompute()
    checkpoint_every_steps: int = Field(200, ge=1)
    eval_every_steps: int = Field(100, ge=1)
    eval_batches: int = Field(8, ge=1, description="held-out batches per evaluation")
    log_every_steps: int = Field(10, ge=1, description="train/* metrics are logged every this many steps")

    @model_validator(mode="after")
    def _inputs_match_mode(self) -> "TrainSpec":
        if self.mode.type == "pretrain" and self.inputs.corpus is None:
            raise ValueError("inputs.corpus is required for mode.type=pretrain (a text dataset artifact)")
        if self.mode.type == "sft" and (self.inputs.data is None or self.inputs.model is None):
            raise ValueError("inputs.data and inputs.model are required for mode.type=sft")
        if self.mode.type == "pretrain" and self.seq_len > self.mode.arch.max_seq_len:
            raise ValueError(f"seq_len {self.seq_len} exceeds mode.arch.max_seq_len {self.mode.arch.max_seq_len}")
        return self
