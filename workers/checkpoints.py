"""Training checkpoints shared by `train` and `rl`: weights + tokenizer, optimizer, RNG states, loop state.

A checkpoint is a directory written atomically under the run's work dir, then handed to the platform
(`ctx.save_checkpoint`), which stores it as an artifact. Tensors are loaded back with
`torch.load(weights_only=True)`; loop state is JSON. Restoring everything makes a resumed CPU run
bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitsmith.platform.context import RunContext
from bitsmith.platform.errors import DataError
from bitsmith.workers.data.tokenizer import save_tokenizer


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


def write_checkpoint(ctx: RunContext, step: int, model: Any, tokenizer: Any, optimizer: torch.optim.Optimizer,
                     state_file: str, state: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """`work_dir/checkpoints/step-N/`: model/ (HF), optimizer.pt, rng.pt and `state_file` (JSON)."""
    root = ctx.work_dir / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "model")
    save_tokenizer(tokenizer, tmp / "model")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / state_file).write_text(json.dumps(state, indent=2, sort_keys=True))
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    ctx.save_checkpoint(final, step, {"step": step, **metadata})
    return final


def read_checkpoint(path: Path, optimizer: torch.optim.Optimizer, state_file: str, job: str) -> dict[str, Any]:
    """Restore optimizer and RNG states (the model loads from `path/model`); returns the loop state."""
    state_path = Path(path) / state_file
    if not state_path.is_file():
        raise DataError(f"{path}: no {state_file}; expected a checkpoint written by a {job} job")
    optimizer.load_state_dict(torch.load(Path(path) / "optimizer.pt", weights_only=True))
    set_rng_state(torch.load(Path(path) / "rng.pt", weights_only=True))
    return json.loads(state_path.read_text())
