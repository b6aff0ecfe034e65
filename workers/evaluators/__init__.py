"""Evaluators of `eval` jobs: one plain-function module per metric family, and the registry of task runners.

Each family module (`perplexity`, `kl`, `choice`, `generation`) exposes plain functions on tensors
and token lists (reusable from search loops) and registers one runner per spec task type with
`@evaluator("type")`. A runner takes the task spec and an `EvalEnv` and returns a `TaskResult`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bitsmith.platform.context import InputArtifact, OutputArtifact
from bitsmith.platform.errors import SpecError
from bitsmith.workers.registry import Registry


@dataclass
class EvalEnv:
    """What every task runner needs: the loaded model, its inputs and the batch settings."""

    model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    batch_size: int
    seed: int
    work_dir: Path
    datasets: list[InputArtifact]
    reference: InputArtifact | None = None
    progress: Callable[..., Any] | None = None  # ctx.progress(total=..., desc=...)
    task_files: dict[str, InputArtifact] = field(default_factory=dict)  # digest -> a verified `task_file.I` input

    def task_file(self, ref: str, where: str) -> InputArtifact:
        """The verified input whose digest `ref` (`sha256:DIGEST`, a resolved task `file`) names."""
        found = self.task_files.get(ref.removeprefix("sha256:"))
        if found is None:
            raise SpecError(f"{where}: file {ref!r} is not a verified input of this run; expected a task file "
                            "imported on submit (`bitsmith submit` imports local task files as artifacts)")
        return found

    def dataset(self, index: int) -> InputArtifact:
        if index >= len(self.datasets):
            raise SpecError(f"tasks: data_index {index} but {len(self.datasets)} dataset input(s); "
                            "expected an index into inputs.data")
        return self.datasets[index]

    @contextmanager
    def bar(self, total: int | None, desc: str) -> Iterator[Callable[[int], None]]:
        """`with env.bar(total, desc) as update:` a progress bar's `update(n)` (a no-op without one)."""
        if self.progress is None:
            yield lambda n=1: None
            return
        bar = self.progress(total=total, desc=desc)
        try:
            yield bar.update
        finally:
            bar.close()


@dataclass
class TaskResult:
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, OutputArtifact] = field(default_factory=dict)


Runner = Callable[[Any, EvalEnv], TaskResult]
EVALUATORS: Registry[Runner] = Registry("tasks", "task type")
evaluator = EVALUATORS.register  # registers the runner of one spec task type


def get_evaluator(task_type: str) -> Runner:
    _load_families()
    return EVALUATORS.lookup(task_type)


def _load_families() -> None:
    from . import choice, generation, kl, perplexity  # noqa: F401  (registers their runners)
