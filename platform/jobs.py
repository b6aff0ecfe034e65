"""Which worker module runs each job kind (workers are imported only when a job of that kind runs)."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import SpecError

WORKER_MODULES: dict[str, str | None] = {
    "train": "bitsmith.workers.train",
    "quantize": "bitsmith.workers.quantize",
    "eval": "bitsmith.workers.eval",
    "search": "bitsmith.workers.search",
    "rl": "bitsmith.workers.rl",
    "noop": "bitsmith.workers.noop",
}


def check_runnable(kind: str) -> None:
    """Refuse, before anything is written, a kind whose worker is not part of this version."""
    if kind not in WORKER_MODULES:
        raise SpecError(f"kind: unknown job kind {kind!r}; expected one of {', '.join(WORKER_MODULES)}")
    if WORKER_MODULES[kind] is None:
        runnable = ", ".join(k for k, v in WORKER_MODULES.items() if v)
        raise SpecError(f"kind: {kind!r} jobs have a spec but no worker in this version of bitsmith; "
                        f"runnable kinds: {runnable}")


def load_worker(kind: str) -> ModuleType:
    check_runnable(kind)
    return importlib.import_module(WORKER_MODULES[kind])  # type: ignore[arg-type]
