"""The one table of job kinds: kind -> spec class, worker module, declared outputs.

Everything that lists job kinds derives from `JOB_KIND_TABLE`: the spec union and `JOB_KINDS` (`specs`),
the worker loader and the check of what a worker returns (`platform.jobs`), `bitsmith spec-schema`, and the
pipeline check of `RUN_NAME/ROLE` references. A worker module is named by its dotted path and imported only
when a job of its kind runs (specs never import workers).
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from .common import JobSpecBase
from .eval import EvalSpec
from .export import ExportSpec
from .noop import NoopSpec
from .quantize import QuantizeSpec
from .rl import RLSpec
from .search import SearchSpec
from .train import TrainSpec


@dataclass(frozen=True)
class Output:
    """One output a job kind declares: its role (or a `*` pattern), artifact kind, and whether it is required.

    `via_context` outputs are recorded while the job runs (`ctx.save_checkpoint`, `ctx.cached_artifact`);
    the others are what the worker's `run` returns.
    """

    role: str
    kind: str
    required: bool = True
    via_context: bool = False

    def matches(self, role: str) -> bool:
        return fnmatchcase(role, self.role)

    def describe(self) -> dict[str, object]:
        return {"role": self.role, "kind": self.kind, "required": self.required,
                "recorded": "while running" if self.via_context else "returned by run"}


@dataclass(frozen=True)
class JobKind:
    spec: type[JobSpecBase]
    worker: str  # dotted module path with `run(spec, ctx) -> WorkerOutputs`
    outputs: tuple[Output, ...]

    @property
    def kind(self) -> str:
        return self.spec.model_fields["kind"].default

    def output_for(self, role: str) -> Output | None:
        """The declaration `role` falls under (exact roles before patterns), or None."""
        exact = [o for o in self.outputs if o.role == role]
        return (exact or [o for o in self.outputs if o.matches(role)] or [None])[0]


CHECKPOINTS = Output("checkpoint/step-*", "checkpoint", required=False, via_context=True)
REPORT = Output("report", "report")

JOB_KIND_TABLE: dict[str, JobKind] = {entry.kind: entry for entry in (
    JobKind(QuantizeSpec, "bitsmith.workers.quantize", (
        Output("model", "quantized-model"), REPORT,
        Output("export", "compressed-tensors-model", required=False))),
    JobKind(SearchSpec, "bitsmith.workers.search", (
        Output("allocation", "allocation"), Output("model", "quantized-model"), REPORT,
        Output("heatmap", "plot", required=False), Output("pareto", "plot", required=False),  # need matplotlib
        CHECKPOINTS, Output("derived/level-db", "level-db", required=False, via_context=True))),
    JobKind(EvalSpec, "bitsmith.workers.eval", (
        REPORT, Output("samples", "samples"),
        Output("reference_logits", "logits", required=False),  # a `kl` task that ran its reference model
        Output("*_reference_logits", "logits", required=False))),  # ... of a `kl` task with a metric prefix
    JobKind(RLSpec, "bitsmith.workers.rl", (
        Output("model", "model"), Output("samples", "samples"), Output("curve", "plot"), REPORT, CHECKPOINTS)),
    JobKind(TrainSpec, "bitsmith.workers.train", (
        Output("model", "model"), Output("curve", "plot"), REPORT, CHECKPOINTS)),
    JobKind(NoopSpec, "bitsmith.workers.noop", (Output("result", "result"),)),
    JobKind(ExportSpec, "bitsmith.workers.export", (Output("export", "export"),)),
)}
