"""Spec of `export` jobs: write a quantized model (a `quantize` or `search` output) in a format a serving
runtime loads: compressed-tensors, the GPTQ layout, or GGUF."""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .common import ArtifactRef, JobSpecBase, StrictModel

QUANTIZED_MODEL_KINDS: tuple[str, ...] = ("quantized-model",)


class CompressedTensorsTarget(StrictModel):
    """compressed-tensors `pack-quantized`: one config group per (bits, group size, symmetry), explicit
    module targets, every other linear layer ignored (transformers and vLLM load it)."""

    format: Literal["compressed-tensors"] = "compressed-tensors"


class GPTQTarget(StrictModel):
    """The GPTQ checkpoint layout (`qweight`/`qzeros`/`scales`/`g_idx` + `quantize_config.json`); mixed
    precision as GPTQModel's per-module `dynamic` overrides."""

    format: Literal["gptq"] = "gptq"
    checkpoint_format: Literal["auto", "gptq", "gptq_v2"] = Field(
        "auto", description="gptq: zero points stored minus one (what vLLM/AutoGPTQ read; a zero point of 0 "
                            "cannot be stored); gptq_v2: as is (GPTQModel); auto: gptq unless a zero point is 0")


class GGUFTarget(StrictModel):
    """GGUF (llama.cpp): tokenizer, config and tensors; codes copied where the block types agree (groups a
    multiple of 32, no act-order: symmetric 2/3/4-bit -> Q4_0, asymmetric 2/3/4-bit -> Q4_1, symmetric
    5/6/8-bit -> Q8_0), other layouts requantized (Q5_1 for asymmetric 5-bit, else Q8_0; noted per tensor in
    the metadata)."""

    format: Literal["gguf"] = "gguf"
    float_type: Literal["f32", "f16"] = Field("f32", description="type of the tensors left unquantized "
                                                                 "(embeddings, norms, lm_head)")
    quantized_weights: Literal["blocks", "dequantized"] = Field(
        "blocks", description="blocks: each quantized layer in a GGUF block type (its codes where one holds them); "
                              "dequantized: its dequantized weight in float_type, a reference file with the same "
                              "weights that llama.cpp multiplies without its quantized kernels (those round "
                              "activations to 8 bits)")


ExportTarget = Annotated[CompressedTensorsTarget | GPTQTarget | GGUFTarget, Field(discriminator="format")]
EXPORT_FORMATS: tuple[str, ...] = ("compressed-tensors", "gptq", "gguf")


class ExportInputs(StrictModel):
    model: ArtifactRef = Field(..., description="quantized-model artifact (the `model` output of quantize or search)")


class ExportSpec(JobSpecBase):
    INPUT_KINDS: ClassVar[dict[str, tuple[str, ...]]] = {"model": QUANTIZED_MODEL_KINDS}

    kind: Literal["export"] = "export"
    inputs: ExportInputs
    target: ExportTarget = Field(..., description="the format written, with its options")
