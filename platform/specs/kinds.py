"""Which artifact kinds each input role accepts: checked at submission, before any run row is written.

Each job spec class declares `INPUT_KINDS` (role -> accepted kinds) next to its inputs; a role it does not
list accepts any kind. List inputs (`data.0`, `data.1`) share their field's entry.
"""
from __future__ import annotations

DATASET = "dataset"
TASK_FILE = "task-file"  # a local file a task reads (e.g. an eval `choice` task's `file`), imported on submit
HF_MODEL_KINDS: tuple[str, ...] = ("model",)  # a Hugging Face model directory (imported, trained or RL-tuned)
EVAL_MODEL_KINDS: tuple[str, ...] = ("model", "quantized-model", "compressed-tensors-model")
DATASET_KINDS: tuple[str, ...] = (DATASET,)


def accepted_kinds(input_kinds: dict[str, tuple[str, ...]], role: str) -> tuple[str, ...] | None:
    """The kinds input `role` accepts (None: any); `data.3` is looked up as `data`."""
    return input_kinds.get(role.split(".", 1)[0])
