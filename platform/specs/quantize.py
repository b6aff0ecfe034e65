"""Spec of `quantize` jobs: weight-only post-training quantization of a model artifact (RTN or GPTQ)."""
from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from .common import ArtifactRef, Compute, JobSpecBase, StrictModel
from .kinds import DATASET_KINDS, HF_MODEL_KINDS

ALLOWED_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
MIN_GROUP_SIZE, MAX_GROUP_SIZE = 32, 1024


def _check_bits(value: int | None) -> int | None:
    if value is not None and value not in ALLOWED_BITS:
        raise ValueError(f"bits {value} not supported; expected one of {', '.join(map(str, ALLOWED_BITS))}")
    return value


def _check_group_size(value: int | None) -> int | None:
    """-1 and null both mean per-channel (one group per output row); stored as null."""
    if value is None or value == -1:
        return None
    if not MIN_GROUP_SIZE <= value <= MAX_GROUP_SIZE:
        raise ValueError(f"group_size {value} out of range; expected null or -1 (per-channel) "
                         f"or {MIN_GROUP_SIZE}..{MAX_GROUP_SIZE}")
    return value


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return pattern


Bits = Annotated[int, AfterValidator(_check_bits)]
GroupSize = Annotated[int | None, AfterValidator(_check_group_size)]
Regex = Annotated[str, AfterValidator(_check_regex)]


class RTNMethod(StrictModel):
    """Round-to-nearest: every weight group quantized independently (no calibration needed)."""

    type: Literal["rtn"] = "rtn"


class GPTQMethod(StrictModel):
    """GPTQ (Frantar et al., 2022): error-compensating quantization with calibration Hessians."""

    type: Literal["gptq"] = "gptq"
    damp_percent: float = Field(0.01, gt=0, le=1, description="damping added to diag(H), as a fraction of its mean")
    block_size: int = Field(128, ge=1, le=4096, description="columns per lazy-batch update")
    act_order: bool = Field(False, description="quantize columns in order of decreasing Hessian diagonal")
    static_groups: bool = Field(False, description="with act_order: fix group parameters up front "
                                                   "(groups stay contiguous, no g_idx)")


QuantMethod = Annotated[RTNMethod | GPTQMethod, Field(discriminator="type")]


class QuantizeInputs(StrictModel):
    model: ArtifactRef = Field(..., description="Hugging Face causal-LM model artifact")
    calibration: ArtifactRef | None = Field(None, description="text dataset artifact (required for gptq)")


class CalibrationConfig(StrictModel):
    sequences: int = Field(128, ge=1, description="calibration sequences")
    seq_len: int = Field(512, ge=8, description="tokens per calibration sequence")
    split: str = Field("calibration", description="dataset split the texts come from")
    batch_size: int = Field(8, ge=1, description="sequences per forward pass")


class ModuleSelection(StrictModel):
    """Which linear layers inside the decoder blocks are quantized (regexes, `re.search` on the full
    module name); embeddings and lm_head are outside the blocks and never quantized."""

    include: tuple[Regex, ...] = (".*",)
    exclude: tuple[Regex, ...] = ()


class LayerOverride(StrictModel):
    """Per-module bits and/or group size (e.g. a bit allocation produced by a `search` job)."""

    bits: Bits | None = None
    group_size: int | None = Field(None, description="null: keep the job's group size; -1: per-channel")

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int | None) -> int | None:
        return -1 if v == -1 else _check_group_size(v)


class QuantizeSpec(JobSpecBase):
    INPUT_KINDS: ClassVar[dict[str, tuple[str, ...]]] = {"model": HF_MODEL_KINDS, "calibration": DATASET_KINDS}

    kind: Literal["quantize"] = "quantize"
    inputs: QuantizeInputs
    method: QuantMethod = GPTQMethod()
    bits: Bits = Field(4, description="bits per weight code: 2, 3, 4, 5, 6 or 8")
    group_size: GroupSize = Field(128, description="input columns sharing a scale; null or -1: per-channel")
    symmetric: bool = Field(False, description="zero point fixed at the grid's midpoint")
    mse_clip: bool = Field(False, description="search a clipped range minimising |W - Q(W)|^2.4 per group")
    calibration: CalibrationConfig = CalibrationConfig()
    modules: ModuleSelection = ModuleSelection()
    overrides: dict[Regex, LayerOverride] = Field(
        default_factory=dict, description="module name, or regex matched in full, -> {bits, group_size}")
    layout: Literal["bitsmith", "gguf"] = Field(
        "bitsmith", description="gguf: produce exactly GGUF's blocks (2/3/4-bit -> Q4_0 symmetric / Q4_1 "
                                "asymmetric, symmetric 5/6/8-bit -> Q8_0; groups a multiple of 32): asymmetric "
                                "scales are rounded so Q4_1's fp16 minimum is exact, before GPTQ's error "
                                "feedback sees them")
    export: Literal["none", "compressed-tensors"] = Field(
        "none", description="also write an `export` artifact in this ecosystem format")
    compute: Compute = Compute()  # its dtype is that of the calibration forward passes

    @model_validator(mode="after")
    def _gguf_layout(self) -> "QuantizeSpec":
        if self.layout != "gguf":
            return self
        widths = {self.bits} | {o.bits for o in self.overrides.values() if o.bits is not None}
        groups = {self.group_size} | {o.group_size for o in self.overrides.values() if o.group_size not in (None, -1)}
        bad = sorted(b for b in widths if b > 4 and not self.symmetric)
        if bad:
            raise ValueError(f"layout gguf: asymmetric {bad[0]}-bit codes have no exact GGUF block type; expected "
                             "bits 2, 3 or 4 (Q4_1), or symmetric=true (Q4_0 / Q8_0)")
        if any(g is not None and g % 32 for g in groups):
            raise ValueError(f"layout gguf: group_size {sorted(g for g in groups if g and g % 32)[0]} is not a "
                             "multiple of 32; expected 32, 64, 128, ... (GGUF blocks hold 32 weights)")
        if isinstance(self.method, GPTQMethod) and self.method.act_order and not self.method.static_groups:
            raise ValueError("layout gguf: act-order groups (g_idx) do not map to GGUF blocks; expected "
                             "method.static_groups=true with method.act_order=true")
        return self

    @model_validator(mode="after")
    def _calibration_for_gptq(self) -> "QuantizeSpec":
        if self.method.type == "gptq" and self.inputs.calibration is None:
            raise ValueError("inputs.calibration is required for method.type=gptq (a text dataset artifact)")
        return self
