"""Spec of `eval` jobs: perplexity, KL to a reference, multiple choice and generation tasks on one model.

`token_ppl` (fixed-length chunks of the joined text, the quantization literature's protocol) and
`word_ppl` (rolling windows over whole documents, lm-evaluation-harness's protocol; also reports
`byte_ppl`) are different numbers and keep different names in every metric and report.
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .common import ArtifactRef, Compute, JobSpecBase, StrictModel
from .kinds import DATASET_KINDS, EVAL_MODEL_KINDS, TASK_FILE

TASK_FILE_ROLE = "task_file"  # input role `task_file.I`: the file of tasks[I] (a choice task's `file`)

Split = Literal["train", "calibration", "test"]


class EvalInputs(StrictModel):
    model: ArtifactRef = Field(description="model artifact to evaluate (HF directory or bitsmith-quantized)")
    data: ArtifactRef | list[ArtifactRef] | None = Field(
        None, description="dataset artifact(s); tasks pick one with `data_index`")
    reference: ArtifactRef | None = Field(
        None, description="reference for `kl` tasks: a model artifact, or a `logits` artifact of an earlier eval")

    def data_count(self) -> int:
        if self.data is None:
            return 0
        return len(self.data) if isinstance(self.data, list) else 1


class _TaskBase(StrictModel):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]+$", max_length=64,
                             description="metric prefix (default: the split for perplexities, `mc`, `gen`)")
    data_index: int = Field(0, ge=0, description="which of inputs.data this task reads")


class TokenPplTask(_TaskBase):
    """Token perplexity over the split's texts joined by blank lines, cut into `seq_len` chunks."""

    type: Literal["token_ppl"] = "token_ppl"
    split: Split = "test"
    seq_len: int = Field(512, ge=2, description="tokens per chunk")
    max_chunks: int | None = Field(None, ge=1, description="evaluate at most this many chunks")


class WordPplTask(_TaskBase):
    """Word and byte perplexity over whole documents with rolling windows (lm-evaluation-harness)."""

    type: Literal["word_ppl"] = "word_ppl"
    split: Split = "test"
    max_docs: int | None = Field(None, ge=1, description="evaluate at most this many documents")
    seq_len: int | None = Field(None, ge=2, description="window length (default: the model's context)")


class KLTask(_TaskBase):
    """Mean per-token KL(reference || model) over `seq_len` chunks of the split."""

    type: Literal["kl"] = "kl"
    split: Split = Field("calibration", description="calibration by default: the split searches select on")
    seq_len: int = Field(512, ge=2)
    max_chunks: int | None = Field(32, ge=1)
    top_k: int | None = Field(None, ge=1, description="cache only the reference's top-k log-probs (+ a tail bucket)")


class ChoiceTask(_TaskBase):
    """Multiple choice by log-likelihood: records `{"question" | "context", "choices": [...], "label": int}`."""

    type: Literal["choice"] = "choice"
    file: str | None = Field(None, description="JSONL file (instead of a dataset input): a local path, imported as a "
                                               "`task-file` artifact on submit, or a ref to such an artifact")
    split: Split = "test"
    limit: int | None = Field(None, ge=1, description="evaluate at most this many questions")
    target_delimiter: str = Field(" ", description="joins the question and each choice")


Extractor = Literal["last_number", "boxed", "gsm8k"]


class GenerationTask(_TaskBase):
    """Generate answers to a prompts dataset; exact match, pass@k and maj@k of extracted answers."""

    type: Literal["generation"] = "generation"
    split: Split = "test"
    limit: int | None = Field(None, ge=1, description="evaluate at most this many prompts")
    n_samples: int = Field(1, ge=1, le=1024, description="samples per prompt")
    k: tuple[int, ...] = Field((1,), min_length=1, description="pass@k / maj@k values, each <= n_samples")
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=1)
    stop: tuple[str, ...] = Field((), description="cut each output at the first of these strings")
    extractor: Extractor = "last_number"
    maj_subsets: int = Field(32, ge=1, description="random k-subsets averaged for maj@k")

    @field_validator("k")
    @classmethod
    def _k_positive(cls, k: tuple[int, ...]) -> tuple[int, ...]:
        if any(v < 1 for v in k):
            raise ValueError(f"k values must be >= 1; got {list(k)}")
        return tuple(sorted(set(k)))

    @model_validator(mode="after")
    def _samples_fit(self) -> "GenerationTask":
        if max(self.k) > self.n_samples:
            raise ValueError(f"k={max(self.k)} needs at least that many samples; n_samples is {self.n_samples}")
        if self.n_samples > 1 and self.temperature == 0:
            raise ValueError("n_samples > 1 with temperature 0 repeats one greedy sample; set temperature > 0")
        return self


EvalTask = Annotated[TokenPplTask | WordPplTask | KLTask | ChoiceTask | GenerationTask,
                     Field(discriminator="type")]
TASK_TYPES: tuple[str, ...] = ("token_ppl", "word_ppl", "kl", "choice", "generation")
LM_EVAL_TASK_TYPES: tuple[str, ...] = ("word_ppl", "choice")


def metric_prefix(task: TokenPplTask | WordPplTask | KLTask | ChoiceTask | GenerationTask) -> str:
    """The prefix of a task's metric names: `test/token_ppl`, `kl`, `mc/acc`, `gen/pass@4`."""
    if task.name is not None:
        return task.name + "/"
    if task.type in ("token_ppl", "word_ppl"):
        return f"{task.split}/" if task.data_index == 0 else f"data{task.data_index}.{task.split}/"
    return {"kl": "", "choice": "mc/", "generation": "gen/"}[task.type]


class EvalSpec(JobSpecBase):
    """Tasks on one model. A choice task's `file` is an input like the others (role `task_file.I` for
    tasks[I]): resolved to a digest at submission, in the cache key and lineage, verified on the worker."""

    INPUT_KINDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "model": EVAL_MODEL_KINDS, "data": DATASET_KINDS, "reference": (*EVAL_MODEL_KINDS, "logits"),
        TASK_FILE_ROLE: (TASK_FILE,)}

    kind: Literal["eval"] = "eval"
    inputs: EvalInputs
    tasks: tuple[EvalTask, ...] = Field(min_length=1)
    backend: Literal["native", "lm_eval"] = "native"
    batch_size: int = Field(8, ge=1, description="sequences per forward pass")
    compute: Compute = Compute()
    deterministic: bool = Field(False, description="fp32, dataset order batches, deterministic kernels")

    def task_files(self) -> dict[int, str]:
        """Task index -> the `file` of each choice task that has one."""
        return {i: t.file for i, t in enumerate(self.tasks) if t.type == "choice" and t.file is not None}

    def with_task_files(self, files: dict[int, str]) -> "EvalSpec":
        """A copy whose tasks[I].file is `files[I]` (e.g. `sha256:DIGEST` for an imported local file)."""
        tasks = tuple(t.model_copy(update={"file": files[i]}) if i in files else t for i, t in enumerate(self.tasks))
        return self.model_copy(update={"tasks": tasks})

    def input_refs(self) -> dict[str, ArtifactRef]:
        refs = super().input_refs()
        refs.update({f"{TASK_FILE_ROLE}.{i}": file for i, file in self.task_files().items()})
        return refs

    def input_field(self, role: str) -> str:
        base, _, index = role.partition(".")
        return f"tasks[{index}].file" if base == TASK_FILE_ROLE else super().input_field(role)

    def with_resolved_inputs(self, digests: dict[str, str]) -> "EvalSpec":
        resolved = super().with_resolved_inputs(digests)
        return resolved.with_task_files({i: f"sha256:{digests[f'{TASK_FILE_ROLE}.{i}']}" for i in self.task_files()})

    @model_validator(mode="after")
    def _tasks_consistent(self) -> "EvalSpec":
        n_data = self.inputs.data_count()
        seen: dict[tuple[str, str], int] = {}
        for i, task in enumerate(self.tasks):
            where = f"tasks[{i}] ({task.type})"
            needs_data = not (task.type == "choice" and task.file is not None)
            if needs_data and task.data_index >= n_data:
                have = "no inputs.data" if n_data == 0 else f"{n_data} dataset(s) in inputs.data"
                fix = "add the dataset to inputs.data" + (" or give `file`" if task.type == "choice" else "")
                raise ValueError(f"{where}: data_index {task.data_index} but {have}; {fix}")
            if task.type == "kl" and self.inputs.reference is None:
                raise ValueError(f"{where}: needs inputs.reference (a model or a logits artifact)")
            if self.backend == "lm_eval" and task.type not in LM_EVAL_TASK_TYPES:
                raise ValueError(f"{where}: backend lm_eval runs {', '.join(LM_EVAL_TASK_TYPES)} tasks; "
                                 "use backend native for this one")
            key = (task.type, metric_prefix(task))
            if key in seen:
                raise ValueError(f"{where}: same metric names as tasks[{seen[key]}]; give one a distinct `name`")
            seen[key] = i
        if self.deterministic and self.compute.dtype != "fp32":
            raise ValueError(f"deterministic evaluation runs in fp32; got compute.dtype {self.compute.dtype}")
        return self
