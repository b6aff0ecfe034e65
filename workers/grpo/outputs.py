"""Outputs of an `rl` run: the trained policy as a Hugging Face directory, and the learning curve PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bitsmith.platform.digests import write_artifact_meta
from bitsmith.workers.data.tokenizer import save_tokenizer


def write_model(path: Path, model, tokenizer, base: str, rl: dict[str, Any]) -> Path:
    """The policy (+ tokenizer, artifact.json naming the base model and the rewards it was trained on)."""
    model.save_pretrained(path)
    save_tokenizer(tokenizer, path)
    meta = {"kind": "model", "format": "hf",
            "architecture": model.config.architectures[0] if model.config.architectures else type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()), "dtype": "float32",
            "train_mode": "rl", "base_model": base, "rl": rl}
    write_artifact_meta(path, meta)
    return path


def write_curve(path: Path, history: list[dict[str, float]], before: dict[str, float],
                after: dict[str, float]) -> Path:
    """Reward mean and sampled accuracy per step, with greedy accuracy before and after as markers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = range(1, len(history) + 1)
    if history:
        ax.plot(steps, [h["reward/mean"] for h in history], label="reward mean")
        ax.plot(steps, [h["rollout/accuracy"] for h in history], label="sampled accuracy")
    last = max(len(history), 1)
    for split, marker in (("train", "o"), ("test", "s")):
        if split in before and split in after:
            ax.plot([0, last], [before[split], after[split]], marker=marker, linestyle="none",
                    label=f"greedy {split} accuracy (before, after)")
    ax.set_xlabel("step")
    ax.set_ylabel("reward / accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
