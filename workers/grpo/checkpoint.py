"""Checkpoints of an `rl` run: policy weights, optimizer state, all RNG states, loop state and samples.

Loaded with `torch.load(weights_only=True)`; a run resumed from one ends bit-identical (CPU) to an
uninterrupted run, because everything else it draws is a pure function of (seed, step).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitsmith.platform.context import RunContext
from bitsmith.platform.errors import DataError
from bitsmith.workers.data.tokenizer import save_tokenizer

STATE_FILE = "rl_state.json"


@dataclass
class LoopState:
    """What the loop carries from step to step (besides weights and optimizer)."""

    step: int = 0  # optimizer steps (RL steps) done
    cursor: int = 0  # position in the seeded prompt stream
    before: dict[str, float] = field(default_factory=dict)  # greedy accuracy before RL
    history: list[dict[str, float]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU, and CUDA when present) RNG states as tensors and plain values."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ctx: RunContext, model, tokenizer, optimizer, state: LoopState) -> Path:
    """Write the checkpoint atomically under the work dir, then hand it to the platform."""
    root = ctx.work_dir / "checkpoints"
    final = root / f"step-{state.step:08d}"
    tmp = root / f".tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "model")
    save_tokenizer(tokenizer, tmp / "model")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps(asdict(state), sort_keys=True))
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    last = state.history[-1] if state.history else {}
    ctx.save_checkpoint(final, state.step, {"step": state.step, **last})
    return final


def restore_checkpoint(path: Path, optimizer) -> LoopState:
    """Load optimizer and RNG states (the model was loaded from `path/model`); returns the loop state."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise DataError(f"{path}: no {STATE_FILE}; expected a checkpoint written by an rl job")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return LoopState(**json.loads(state_file.read_text()))
