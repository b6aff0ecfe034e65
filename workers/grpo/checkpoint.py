"""Checkpoints of an `rl` run: policy weights, optimizer state, all RNG states, loop state and samples.

Loaded with `torch.load(weights_only=True)`; a run resumed from one ends bit-identical (CPU) to an
uninterrupted run, because everything else it draws is a pure function of (seed, step).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bitsmith.platform.context import RunContext
from bitsmith.workers.checkpoints import read_checkpoint, write_checkpoint

STATE_FILE = "rl_state.json"


@dataclass
class LoopState:
    """What the loop carries from step to step (besides weights and optimizer)."""

    step: int = 0  # optimizer steps (RL steps) done
    cursor: int = 0  # position in the seeded prompt stream
    before: dict[str, float] = field(default_factory=dict)  # greedy accuracy before RL
    history: list[dict[str, float]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)


def save_checkpoint(ctx: RunContext, model, tokenizer, optimizer, state: LoopState) -> Path:
    """Write the checkpoint atomically under the work dir, then hand it to the platform."""
    last = state.history[-1] if state.history else {}
    return write_checkpoint(ctx, state.step, model, tokenizer, optimizer, STATE_FILE, asdict(state), last)


def restore_checkpoint(path: Path, optimizer) -> LoopState:
    """Load optimizer and RNG states (the model was loaded from `path/model`); returns the loop state."""
    return LoopState(**read_checkpoint(path, optimizer, STATE_FILE, "rl"))
