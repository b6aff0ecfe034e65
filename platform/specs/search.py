"""Spec of `search` jobs: per-layer bit allocation (mixed precision) of one model under a budget.

A search quantizes every selected linear layer at each candidate width once (the level database),
then picks one level per layer: `evo` (EvoPress), `hessian` (HAWQ-V2 style sensitivities + knapsack),
`dp` (additive-error knapsack), `linear` (HIGGS-style linearity model fitted on measured configurations,
then an exact knapsack), `bisect` (within a quality loss) or `uniform`. The uniform allocation
for the same budget is always computed and reported beside the chosen method's result.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

from .common import ArtifactRef, JobSpecBase, SearchCompute, StrictModel
from .kinds import DATASET_KINDS, HF_MODEL_KINDS
from .quantize import Bits, GPTQMethod, GroupSize, ModuleSelection, QuantMethod

QUANTIZED_MODEL_KINDS: tuple[str, ...] = ("quantized-model",)  # baselines: bitsmith-format quantize outputs


class SearchInputs(StrictModel):
    model: ArtifactRef = Field(..., description="Hugging Face causal-LM model artifact (unquantized)")
    calibration: ArtifactRef = Field(..., description=(
        "text dataset artifact: its calibration split calibrates and scores candidates, its test split is held out "
        "for the report"))
    baselines: tuple[ArtifactRef, ...] = Field((), description=(
        "quantized models of the same model (e.g. `quantize` outputs already in the store): the report scores "
        "each on the same test chunks and names the best at or below the chosen allocation's effective bits"))


# -- budgets ----------------------------------------------------------------------------------------
class AvgBitsBudget(StrictModel):
    """Average nominal bits per weight over the searched layers (weighted by parameter count)."""

    type: Literal["avg_bits"] = "avg_bits"
    bits_per_weight: float = Field(..., gt=0, description="e.g. 3.0")


class EffectiveBitsBudget(StrictModel):
    """Average *stored* bits per weight over the searched layers: codes + scales + zero points (+ act-order
    indices), as `quantize` reports `effective_bits_per_weight`; methods compare at equal stored size."""

    type: Literal["effective_bits"] = "effective_bits"
    bits_per_weight: float = Field(..., gt=0, description="e.g. 3.3 (3-bit codes with an fp16 scale and a "
                                                          "3-bit zero point per 64 weights store 3.297)")


class SizeBudget(StrictModel):
    """Bytes of the searched layers' stored weights (codes, scales, zero points)."""

    type: Literal["size_bytes"] = "size_bytes"
    size_bytes: int = Field(..., gt=0)


class QualityBudget(StrictModel):
    """A tolerated loss: calibration-split perplexity at most this many percent above the unquantized model."""

    type: Literal["quality"] = "quality"
    max_ppl_increase_pct: float = Field(..., gt=0, le=1000)


Budget = Annotated[AvgBitsBudget | EffectiveBitsBudget | SizeBudget | QualityBudget, Field(discriminator="type")]


# -- methods ----------------------------------------------------------------------------------------
class SelectionStage(StrictModel):
    """One step of EvoPress's multi-step selection: score on `sequences` fresh calibration sequences, keep
    the best `survivors`."""

    survivors: int = Field(..., ge=1)
    sequences: int = Field(..., ge=1)


class LinearFit(StrictModel):
    """How the linearity model KL(config) ≈ Σ_l α_l · err_l(b_l) is fitted (HIGGS, Malinovskii et al., 2024:
    the loss increase is linear in the per-layer errors). err_l(b) is the level database's output relative
    error of layer l at level b; α_l = a · n_l/N · β_l with a shared scale a and β ≥ 0 pulled towards 1 by a
    ridge penalty (a very strong ridge leaves `dp`'s parameter-weighted objective)."""

    samples: int = Field(48, ge=4, description="random joint configurations whose fitness (KL) is measured")
    mix: float = Field(0.5, gt=0, le=1, description=(
        "per layer, the probability that a sampled configuration takes a random level instead of the "
        "budget's uniform one"))
    holdout: float = Field(0.25, ge=0, lt=1, description=(
        "fraction of the samples held out of the fit to report how well it predicts unseen configurations"))
    ridge: tuple[float, ...] = Field((0.01, 0.1, 1.0, 10.0), min_length=1, description=(
        "candidate ridge strengths; the one with the least cross-validated error on the fitted samples is used"))
    solver: Literal["dp", "milp"] = Field("milp", description="the knapsack over α_l · err_l(b) (both exact at "
                                                              "these sizes; dp coarsens huge budgets)")
    fit: Literal["random", "probe"] = Field("random", description=(
        "random: fit β_l on the measured random configurations; probe: measure each layer alone (the others "
        "unquantized) at the probed levels, α_l by least squares through the origin of its KL on its errors "
        "(HIGGS's per-layer calibration), the measured KL where probed; the random samples then only test "
        "the model on joint configurations"))
    probe_bits: tuple[Bits, ...] = Field((), description=(
        "probe: the widths probed (every group size of levels at each); empty: every level"))

    @field_validator("ridge")
    @classmethod
    def _positive(cls, ridge: tuple[float, ...]) -> tuple[float, ...]:
        if any(r <= 0 for r in ridge):
            raise ValueError(f"expected positive ridge strengths; got {list(ridge)}")
        return ridge

    @model_validator(mode="after")
    def _enough_to_fit(self) -> "LinearFit":
        if self.samples - int(self.samples * self.holdout) < 4:
            raise ValueError(f"samples {self.samples} with holdout {self.holdout} leave fewer than 4 configurations "
                             "to fit; expected more samples or a smaller holdout")
        return self


class LinearMethod(LinearFit):
    """HIGGS-style linearity baseline: fit α_l on measured random configurations, solve the budget exactly."""

    type: Literal["linear"] = "linear"
    fitness_sequences: int = Field(16, ge=1, description="calibration sequences every sample is scored on")
    fitness_seq_len: int = Field(128, ge=8)
    fitness_top_k: int | None = Field(None, ge=1, description="as evo's fitness_top_k")
    n_actors: int = Field(1, ge=1, le=64, description="fitness actors, each holding one model copy")


class EvoMethod(StrictModel):
    """EvoPress (Sieberling et al., 2024): (1+λ) evolution over per-layer levels, fitness = KL to the model."""

    type: Literal["evo"] = "evo"
    generations: int = Field(50, ge=1)
    offspring: int = Field(32, ge=1, description="λ: children per generation")
    max_switches: int = Field(3, ge=1, le=64, description="level switches per child: 1..max_switches")
    stages: tuple[SelectionStage, ...] = Field(
        (SelectionStage(survivors=16, sequences=1), SelectionStage(survivors=4, sequences=4),
         SelectionStage(survivors=1, sequences=16)),
        description="multi-step selection, survivors decreasing to 1; the parent re-enters at the last stage")
    fitness_sequences: int = Field(32, ge=1, description="calibration sequences with cached reference logits")
    fitness_seq_len: int = Field(128, ge=8)
    fitness_top_k: int | None = Field(None, ge=1, description="keep only the reference's k most likely tokens "
                                                              "(e.g. 64 for large vocabularies); null: exact KL")
    init: Literal["uniform", "dp", "linear"] = Field("uniform", description=(
        "starting allocation (uniform is filled greedily up to the budget when no width fits exactly); linear: "
        "the linearity model's allocation, fitted on the evo fitness sequences (also reported as its own row)"))
    linear: LinearFit = Field(LinearFit(), description="the linearity fit, when init is linear")
    n_actors: int = Field(1, ge=1, le=64, description="fitness actors, each holding one model copy")
    checkpoint_every: int = Field(10, ge=1, description="generations between checkpoints")

    @field_validator("stages")
    @classmethod
    def _stages(cls, stages: tuple[SelectionStage, ...]) -> tuple[SelectionStage, ...]:
        if not stages:
            raise ValueError("expected at least one selection stage")
        counts = [s.survivors for s in stages]
        if counts[-1] != 1 or any(b > a for a, b in zip(counts, counts[1:])):
            raise ValueError(f"survivors {counts} must not increase and must end at 1")
        return stages

    @model_validator(mode="after")
    def _enough(self) -> "EvoMethod":
        if max(s.sequences for s in self.stages) > self.fitness_sequences:
            raise ValueError("stages[].sequences exceed fitness_sequences; expected at most "
                             f"{self.fitness_sequences} sequences per stage")
        return self


class HutchinsonConfig(StrictModel):
    samples_max: int = Field(64, ge=1, description="Rademacher probes at most")
    samples_min: int = Field(8, ge=1)
    rel_tol: float = Field(0.05, gt=0, description="stop when every trace's standard error / mean is below this")


class HessianMethod(StrictModel):
    """HAWQ-V2: Ω_i(b) = Tr(H_i)/n_i · ||Q_b(W_i) - W_i||², minimised under the budget by a knapsack."""

    type: Literal["hessian"] = "hessian"
    sensitivity: Literal["hutchinson", "fisher", "input_trace"] = Field(
        "hutchinson", description="hutchinson: loss-Hessian traces (HAWQ-V2); fisher: empirical Fisher diagonal; "
                                  "input_trace: layer-input Hessians, no backward pass (cheap, but blind to how "
                                  "a layer's error reaches the loss)")
    solver: Literal["dp", "milp"] = "dp"
    hutchinson: HutchinsonConfig = HutchinsonConfig()
    gradient_sequences: int = Field(16, ge=1, description="calibration sequences for hutchinson/fisher")


class DPMethod(StrictModel):
    """Additive-error baseline: knapsack over the per-layer normalised output errors."""

    type: Literal["dp"] = "dp"
    weighting: Literal["params", "none"] = Field(
        "params", description="params: each layer's error times its parameter count; none: plain sum")
    solver: Literal["dp", "milp"] = "dp"


class BisectMethod(StrictModel):
    """Drop the k least sensitive layers from high_bits to low_bits; bisect k on the measured perplexity."""

    type: Literal["bisect"] = "bisect"
    high_bits: Bits = 4
    low_bits: Bits = 2
    eval_sequences: int = Field(16, ge=1, description="calibration sequences the perplexity probes use")

    @model_validator(mode="after")
    def _order(self) -> "BisectMethod":
        if self.low_bits >= self.high_bits:
            raise ValueError(f"low_bits {self.low_bits} must be below high_bits {self.high_bits}")
        return self


class UniformMethod(StrictModel):
    """Every layer at the widest level whose total meets the budget."""

    type: Literal["uniform"] = "uniform"


SearchMethod = Annotated[EvoMethod | HessianMethod | DPMethod | LinearMethod | BisectMethod | UniformMethod,
                         Field(discriminator="type")]


class LevelsConfig(StrictModel):
    """The level database: every selected layer quantized at each width, from one Hessian per layer."""

    bits: tuple[Bits, ...] = Field((2, 3, 4, 5, 6, 8), description="candidate widths")
    method: QuantMethod = Field(GPTQMethod(act_order=True, static_groups=True), description=(
        "the per-layer quantizer; the default is the best `quantize` configuration measured (act-order with "
        "static groups: no g_idx, so no extra storage)"))
    group_size: GroupSize = Field(128, description="input columns sharing a scale; null or -1: per-channel")
    group_sizes: tuple[GroupSize, ...] = Field((), description=(
        "more group sizes: every width is also quantized at each of these, so the levels are all (width, group "
        "size) pairs, ordered by width then by falling group size (rising stored size); empty: group_size only"))
    symmetric: bool = False
    mse_clip: bool = Field(True, description="search a clipped range minimising |W - Q(W)|^2.4 per group "
                                             "(as `quantize`'s mse_clip)")
    sequences: int = Field(128, ge=1, description="calibration sequences for the layer Hessians")
    seq_len: int = Field(512, ge=8)
    batch_size: int = Field(8, ge=1)

    @field_validator("bits")
    @classmethod
    def _sorted_unique(cls, bits: tuple[int, ...]) -> tuple[int, ...]:
        if len(bits) < 1 or len(set(bits)) != len(bits):
            raise ValueError(f"expected distinct widths; got {list(bits)}")
        return tuple(sorted(bits))

    @field_validator("group_sizes")
    @classmethod
    def _distinct_groups(cls, sizes: tuple[int | None, ...]) -> tuple[int | None, ...]:
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"expected distinct group sizes; got {list(sizes)}")
        return sizes

    @model_serializer(mode="wrap")
    def _omit_no_extra_groups(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)  # a spec without extra group sizes hashes as before the field existed
        if not data.get("group_sizes"):
            data.pop("group_sizes", None)
        return data

    def grid(self) -> tuple[tuple[int, int | None], ...]:
        """The levels as (bits, group size) pairs in level order; None: per-channel (the largest group)."""
        groups = list(dict.fromkeys((self.group_size, *self.group_sizes)))
        pairs = [(b, g) for b in self.bits for g in groups]
        return tuple(sorted(pairs, key=lambda p: (p[0], -(p[1] or 2 ** 62))))


class ReportConfig(StrictModel):
    uniform: Literal["quantize", "levels"] = Field("quantize", description=(
        "how the uniform row is built: quantize: exactly as a `quantize` job with the level settings (GPTQ's "
        "sequential loop; its spec is in the report); levels: every layer at one width of the level database"))
    test_seq_len: int = Field(128, ge=8, description="chunk length of the held-out (test split) evaluation")
    test_max_chunks: int | None = Field(64, ge=1)
    baseline_dp: bool = Field(True, description="also report the dp allocation (cheap: no extra quantization)")
    bootstrap_resamples: int = Field(2000, ge=0, description=(
        "paired bootstrap over the test chunks of each row's perplexity difference to uniform (95 % interval); "
        "0: none"))
    pareto_uniform_levels: bool = Field(True, description="also measure uniform at every width (the pareto "
                                                          "plot's reference curve; one test evaluation each)")


class SearchSpec(JobSpecBase):
    INPUT_KINDS: ClassVar[dict[str, tuple[str, ...]]] = {"model": HF_MODEL_KINDS, "calibration": DATASET_KINDS,
                                                          "baselines": QUANTIZED_MODEL_KINDS}

    kind: Literal["search"] = "search"
    inputs: SearchInputs
    method: SearchMethod = EvoMethod()
    budget: Budget
    levels: LevelsConfig = LevelsConfig()
    modules: ModuleSelection = ModuleSelection()
    report: ReportConfig = ReportConfig()
    compute: SearchCompute = SearchCompute()

    @model_validator(mode="after")
    def _budget_fits(self) -> "SearchSpec":
        budget, bits = self.budget, self.levels.bits
        if isinstance(self.method, BisectMethod):
            if not isinstance(budget, QualityBudget):
                raise ValueError(f"budget.type: method bisect needs a quality budget; got {budget.type}")
            for field in ("high_bits", "low_bits"):
                if getattr(self.method, field) not in bits:
                    raise ValueError(f"method.{field}: {getattr(self.method, field)} is not a level; expected "
                                     f"one of levels.bits {list(bits)}")
        elif isinstance(budget, QualityBudget):
            raise ValueError(f"budget.type: a quality budget needs method bisect; method {self.method.type} "
                             "takes avg_bits, effective_bits or size_bytes")
        if isinstance(budget, AvgBitsBudget):
            if budget.bits_per_weight < bits[0]:
                raise ValueError(f"budget.bits_per_weight: {budget.bits_per_weight} is below the smallest level "
                                 f"({bits[0]} bits); expected {bits[0]} <= bits_per_weight <= {bits[-1]}")
            if budget.bits_per_weight > bits[-1]:
                raise ValueError(f"budget.bits_per_weight: {budget.bits_per_weight} is above the largest level "
                                 f"({bits[-1]} bits), so there is nothing to search; expected "
                                 f"{bits[0]} <= bits_per_weight <= {bits[-1]}")
        fit = self.method if isinstance(self.method, LinearMethod) else (
            self.method.linear if isinstance(self.method, EvoMethod) and self.method.init == "linear" else None)
        where = "method" if isinstance(self.method, LinearMethod) else "method.linear"
        for b in fit.probe_bits if fit is not None else ():
            if b not in bits:
                raise ValueError(f"{where}.probe_bits: {b} is not a level; expected some of levels.bits {list(bits)}")
        if isinstance(budget, EffectiveBitsBudget) and budget.bits_per_weight < bits[0]:
            raise ValueError(f"budget.bits_per_weight: {budget.bits_per_weight} effective bits is below the smallest "
                             f"level's codes alone ({bits[0]} bits); expected more than {bits[0]} (scales and zero "
                             "points add to the codes)")
        return self
