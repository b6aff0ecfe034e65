"""Sweep results: one row per parameter combination (its newest child), ranked by the objectives, with the
Pareto front marked, and a plot of the first two objectives."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import store
from ..errors import UsageError
from ..specs.sweep import SweepSpec
from .expand import load_sweep_spec, spec_value


@dataclass(frozen=True)
class SweepRow:
    run_id: str
    params: dict[str, Any]
    status: str
    metrics: dict[str, float]
    pareto: bool = False


def sweep_results(db: Any, sweep_id: str) -> tuple[SweepSpec, list[SweepRow]]:
    """One row per parameter combination (its newest child), sorted by the first objective, Pareto marked."""
    record = store.get_sweep(db, sweep_id)
    sweep = load_sweep_spec(record.spec, source=f"sweep {record.id}")
    runs = sorted(store.list_runs(db, sweep_id=record.id, limit=None), key=lambda r: (r.created_at, r.id))
    by_hash = {r.spec_hash: r for r in runs}  # newest child per combination wins
    finals = store.final_metrics(db, [r.id for r in by_hash.values()])
    rows = [SweepRow(r.id, {p: spec_value(r.spec, p) for p in sweep.parameters}, r.status, finals.get(r.id, {}))
            for r in by_hash.values()]
    objectives = [(o.metric, 1.0 if o.goal == "min" else -1.0) for o in sweep.objectives]
    if objectives:
        def key(row: SweepRow) -> tuple[float, ...]:
            return tuple(sign * row.metrics.get(m, math.inf * sign) if row.status == "succeeded" else math.inf
                         for m, sign in objectives)

        scored = [r for r in rows if r.status == "succeeded" and all(m in r.metrics for m, _ in objectives)]
        front = {scored[i].run_id for i in pareto_front([key(r) for r in scored])}
        rows = sorted((SweepRow(r.run_id, r.params, r.status, r.metrics, r.run_id in front) for r in rows), key=key)
    return sweep, rows


def pareto_front(points: list[tuple[float, ...]]) -> list[int]:
    """Indices of the points no other point dominates (all objectives minimised).

    In lexicographic order a point can only be dominated by one before it, and then also by one already on
    the front (dominance is transitive), so each point is compared with the front only.
    """
    front: list[int] = []
    for i in sorted(range(len(points)), key=points.__getitem__):
        if not any(_dominates(points[j], points[i]) for j in front):
            front.append(i)
    return front


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def plot_objectives(sweep: SweepSpec, rows: list[SweepRow], path: Path) -> None:
    """A PNG of the children over the first two objectives, the Pareto front drawn as a line."""
    objectives = sweep.objectives
    if len(objectives) < 2:
        raise UsageError("sweep show --plot: needs two objectives in the sweep spec (x and y of the plot)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (mx, my) = objectives[0].metric, objectives[1].metric
    pts = [(r.metrics[mx], r.metrics[my], r.pareto) for r in rows if mx in r.metrics and my in r.metrics]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[0] for p in pts if not p[2]], [p[1] for p in pts if not p[2]], color="gray", label="children")
    front = sorted((p[0], p[1]) for p in pts if p[2])
    if front:
        ax.plot(*zip(*front), marker="o", color="C3", label="Pareto front")
    ax.set_xlabel(f"{mx} ({objectives[0].goal})")
    ax.set_ylabel(f"{my} ({objectives[1].goal})")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
