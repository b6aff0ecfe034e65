"""The part every job spec shares: identity, seed, resources, inputs, retries, timeout, tags."""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from .strict import INT64_MAX

# An artifact reference as users write it: a digest (or unique prefix, optionally "sha256:"), a plain
# artifact name (its newest registration), "RUN_NAME/OUTPUT" (of the newest succeeded run of that name),
# or "run:RUN_ID/OUTPUT".
ArtifactRef = str


class StrictModel(BaseModel):
    """Frozen, and unknown fields are errors: a typo never silently becomes a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Resources(StrictModel):
    cpus: float = Field(1.0, ge=0, description="CPU cores the job needs")
    gpus: float = Field(0.0, ge=0, description="GPUs the job needs (fractions allowed)")
    memory_bytes: int | None = Field(None, gt=0, description="memory the job needs, in bytes")


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
