"""The search report's pictures: per-layer bits (heatmap) and average bits vs held-out perplexity (pareto)."""
from __future__ import annotations

import logging
from typing import Any

from bitsmith.platform.context import OutputArtifact, RunContext

from .levels import LevelDB

log = logging.getLogger(__name__)


def write_plots(ctx: RunContext, db: LevelDB, allocation: list[int], rows: list[dict[str, Any]]
                ) -> dict[str, OutputArtifact]:
    """`heatmap` and `pareto` PNG artifacts; none (with a log line) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("search: matplotlib not installed; no heatmap or pareto plot")
        return {}
    blocks = sorted({layer.block for layer in db.layers})
    kinds = list(dict.fromkeys(layer.name.rsplit(f".{layer.block}.", 1)[-1] for layer in db.layers))
    grid = [[float("nan")] * len(kinds) for _ in blocks]

    def value(layer: Any, lv: int) -> float:  # the width; with several group sizes, the effective bits
        return layer.levels[lv].bits if db.single_group else layer.levels[lv].effective_bits

    for layer, lv in zip(db.layers, allocation):
        grid[blocks.index(layer.block)][kinds.index(layer.name.rsplit(f".{layer.block}.", 1)[-1])] = value(layer, lv)
    values = [value(layer, lv) for layer in db.layers for lv in range(len(layer.levels))]
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(kinds), 2.0 + 0.3 * len(blocks)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=min(values), vmax=max(values))
    ax.set_xticks(range(len(kinds)), kinds, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(blocks)), [str(b) for b in blocks], fontsize=7)
    ax.set_ylabel("block")
    fig.colorbar(image, ax=ax, label="bits" if db.single_group else "effective bits per weight")
    fig.tight_layout()
    heatmap = ctx.output_path("heatmap.png")
    fig.savefig(heatmap, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    curve = [r for r in rows if r["method"].startswith("uniform-")]
    if curve:
        curve = sorted(curve, key=lambda r: r["effective_bits_per_weight"])
        ax.plot([r["effective_bits_per_weight"] for r in curve], [r["test_token_ppl"] for r in curve], "o-",
                color="lightgray", label="uniform (every level)", zorder=1)
    for row in rows:
        if row["effective_bits_per_weight"] is not None and not row["method"].startswith("uniform-"):
            ax.scatter(row["effective_bits_per_weight"], row["test_token_ppl"], label=row["method"], zorder=2)
    reference = next((r for r in rows if r["method"] == "unquantized"), None)
    if reference is not None:
        ax.axhline(reference["test_token_ppl"], color="gray", linestyle="--", label="unquantized")
    ax.set_xlabel("effective bits per weight (codes, scales, zero points)")
    ax.set_yscale("log")
    ax.set_ylabel("test token perplexity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    pareto = ctx.output_path("pareto.png")
    fig.savefig(pareto, dpi=100)
    plt.close(fig)
    return {"heatmap": OutputArtifact(heatmap, kind="plot", metadata={"plot": "heatmap"}),
            "pareto": OutputArtifact(pareto, kind="plot", metadata={"plot": "pareto"})}
