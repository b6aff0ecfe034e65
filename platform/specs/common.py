"""The part every job spec shares: identity, seed, resources, inputs, retries, timeout, tags; and `compute`."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_validator, model_serializer,
                      model_validator)
from pydantic_core import PydanticCustomError

from .strict import INT64_MAX

# An artifact reference as users write it: a digest (or unique prefix, optionally "sha256:"), a plain
# artifact name (its newest registration), "RUN_NAME/OUTPUT" (of the newest succeeded run of that name),
# or "run:RUN_ID/OUTPUT".
ArtifactRef = str


class StrictModel(BaseModel):
    """Frozen, and unknown fields are errors: a typo never silently becomes a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Ray's own resource names: asked for through cpus/gpus/memory_bytes, never as custom resources.
RESERVED_RESOURCES = {"cpu": "resources.cpus", "gpu": "resources.gpus", "memory": "resources.memory_bytes",
                      "object_store_memory": None}
RESOURCE_PRECISION = 1e-4  # Ray refuses fractional amounts finer than this


def check_custom_resources(custom: dict[str, float]) -> None:
    """Validate custom resource `name: amount` pairs; a ValueError says which entry is wrong and why."""
    for name, amount in custom.items():
        if not name.strip():
            raise ValueError(f"a resource name must be a non-empty string; got {name!r}")
        if name.lower() in RESERVED_RESOURCES:
            use = RESERVED_RESOURCES[name.lower()]
            raise ValueError(f"{name!r} is one of Ray's own resources (CPU, GPU, memory, object_store_memory), "
                             "not a custom one" + (f"; ask for it with {use}" if use else ""))
        if not amount > 0:
            raise ValueError(f"{name}: expected an amount > 0; got {amount!r}")
        if abs(round(amount / RESOURCE_PRECISION) * RESOURCE_PRECISION - amount) > 1e-9:
            raise ValueError(f"{name}: expected an amount in steps of {RESOURCE_PRECISION:g} (Ray's precision); "
                             f"got {amount!r}")


class Resources(StrictModel):
    """What a run asks of the cluster; the dispatcher admits it when that much is free.

    `custom` names the node's custom Ray resources (e.g. `{accel: 1}` on a node started with
    `bitsmith scheduler start --resources '{"accel": 1}'` or `ray start --resources`). Left empty it is not
    written into the stored spec, so specs without it keep their spec hash.
    """

    cpus: float = Field(1.0, ge=0, description="CPU cores the job needs")
    gpus: float = Field(0.0, ge=0, description="GPUs the job needs (fractions allowed)")
    memory_bytes: int | None = Field(None, gt=0, description="memory the job needs, in bytes")
    custom: dict[str, float] = Field(default_factory=dict,
                                     description="custom Ray resources the job needs, name: amount (> 0)")

    @field_validator("custom")
    @classmethod
    def _check_custom(cls, custom: dict[str, float]) -> dict[str, float]:
        try:
            check_custom_resources(custom)
        except ValueError as exc:
            raise PydanticCustomError("custom_resource", str(exc)) from None
        return custom

    @model_serializer(mode="wrap")
    def _omit_empty_custom(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if not data.get("custom"):
            data.pop("custom", None)
        return data

    def __hash__(self) -> int:  # frozen, but `custom` is a dict
        return hash((self.cpus, self.gpus, self.memory_bytes, tuple(sorted(self.custom.items()))))


class Compute(StrictModel):
    """Where and how a job computes its numbers (device, dtype, CPU threads): all of it is in the cache key.

    `threads` left unset is the job's `resources.cpus` (at least 1), resolved when the spec is parsed, so
    the stored spec and the cache key carry the number that decides the order of float reductions. Kinds
    narrow the choices they support (`TrainCompute`, `RLCompute`, `SearchCompute`).
    """

    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: the job's cpus)")


class TrainCompute(Compute):
    """Training runs in fp32 or with bf16 autocast."""

    dtype: Literal["fp32", "bf16"] = "fp32"


class RLCompute(Compute):
    """The RL learner: on the CPU unless asked (its rollout workers are CPU processes), in fp32."""

    device: Literal["auto", "cpu", "cuda"] = "cpu"
    dtype: Literal["fp32"] = "fp32"


class SearchCompute(Compute):
    """A search builds its level database and scores allocations on the CPU in fp32."""

    device: Literal["cpu"] = "cpu"
    dtype: Literal["fp32"] = "fp32"


class NoInputs(StrictModel):
    """For job kinds that consume no artifacts."""


class JobSpecBase(StrictModel):
    """Fields shared by all job kinds. Subclasses add `kind`, `inputs` and their own fields."""

    # Fields that do not change what a job computes; they stay out of the cache key.
    NON_SEMANTIC_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"name", "tags", "resources", "retries", "timeout_s"}
    )
    # Input role -> the artifact kinds it accepts (roles not listed accept any kind); see specs.kinds.
    INPUT_KINDS: ClassVar[dict[str, tuple[str, ...]]] = {}

    name: str | None = Field(None, max_length=200)
    seed: int = Field(0, ge=0, le=INT64_MAX)
    resources: Resources = Resources()
    retries: int = Field(0, ge=0, le=20, description="re-runs after a worker/node failure")
    timeout_s: float | None = Field(None, gt=0)
    tags: tuple[str, ...] = ()
    inputs: StrictModel = NoInputs()

    @model_validator(mode="after")
    def _resolve_threads(self) -> "JobSpecBase":
        """Write the job's cpus into an unset `compute.threads` (the spec is frozen: set it once, here)."""
        compute = getattr(self, "compute", None)
        if isinstance(compute, Compute) and compute.threads is None:
            self.__dict__["compute"] = compute.model_copy(update={"threads": max(1, int(self.resources.cpus))})
        return self

    def input_refs(self) -> dict[str, ArtifactRef]:
        """Named artifact references this job consumes (list inputs become `name.0`, `name.1`, ...)."""
        refs: dict[str, ArtifactRef] = {}
        for key, value in self.inputs.model_dump().items():
            if value is None:
                continue
            if isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    refs[f"{key}.{i}"] = item
            else:
                refs[key] = value
        return refs

    def input_field(self, role: str) -> str:
        """The spec field an input role comes from, for errors: `data.1` -> `inputs.data[1]`."""
        base, dot, index = role.partition(".")
        return f"inputs.{base}[{index}]" if dot else f"inputs.{base}"

    def with_resolved_inputs(self, digests: dict[str, str]) -> "JobSpecBase":
        """A copy whose input references are replaced by `sha256:DIGEST` (names from `input_refs`)."""
        data: dict[str, Any] = self.inputs.model_dump()
        for key, value in list(data.items()):
            if value is None:
                continue
            if isinstance(value, (list, tuple)):
                data[key] = [f"sha256:{digests[f'{key}.{i}']}" for i in range(len(value))]
            else:
                data[key] = f"sha256:{digests[key]}"
        return self.model_copy(update={"inputs": type(self.inputs).model_validate(data)})
