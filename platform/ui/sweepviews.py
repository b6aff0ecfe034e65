"""The sweeps and searches pages: children with parameters and objectives, the Pareto front, a search's
per-layer bits, fitness trajectory and allocation beside uniform."""
from __future__ import annotations

import re
from typing import Any

from .. import store
from ..store.queries import list_sweeps
from ..errors import ArtifactError, NotFoundError, UsageError
from .files import read_json
from .jsonable import jsonable
from .views import series_source

TRAJECTORY_KEYS = ("evo/kl", "evo/evaluations", "bisect/calibration_ppl")
_BLOCK = re.compile(r"\.(\d+)\.")


def sweeps_list(db: Any, *, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
    """One keyset page of sweeps, newest first, with their child counts; `next_cursor` continues it."""
    page = list_sweeps(db, limit=limit, cursor=cursor)
    return jsonable({"rows": [{"id": r.id, "name": r.name, "status": r.status, "created_at": r.created_at,
                               "children": r.children} for r in page.rows],
                     "next_cursor": page.next_cursor})


def sweep_page(db: Any, ref: str) -> dict[str, Any]:
    from ..sweeps import sweep_results

    record = store.get_sweep(db, ref)
    spec, rows = sweep_results(db, record.id)
    return jsonable({"sweep": {"id": record.id, "name": record.name, "status": record.status,
                               "created_at": record.created_at, "children": len(record.run_ids)},
                     "parameters": list(spec.parameters),
                     "objectives": [o.model_dump(mode="json") for o in spec.objectives],
                     "rows": [{"run_id": r.run_id, "params": r.params, "status": r.status, "metrics": r.metrics,
                               "pareto": r.pareto} for r in rows]})


def _output(db: Any, run_id: str, role: str) -> Any | None:
    for e in store.run_outputs(db, run_id):
        if e.role == role:
            return e
    return None


def search_page(db: Any, artifact_root: str, ref: str) -> dict[str, Any]:
    """What a search run recorded: bits per layer (block x layer kind), the fitness series, the report's table."""
    r = store.get_run(db, ref)
    if r.kind != "search":
        raise UsageError(f"run {r.id}: a {r.kind} run; expected a search run")
    heat: dict[str, Any] | None = None
    table: list[dict[str, Any]] = []
    alloc_edge, report_edge = _output(db, r.id, "allocation"), _output(db, r.id, "report")
    try:
        if alloc_edge is not None:
            layers = read_json(db, artifact_root, alloc_edge.digest, "allocation.json").get("layers", {})
            heat = heat_map(layers)
        if report_edge is not None:
            report = read_json(db, artifact_root, report_edge.digest)
            table = [{k: row.get(k) for k in ("method", "avg_bits", "effective_bits_per_weight", "size_bytes",
                                               "test_token_ppl", "test_kl")}
                     for row in report.get("table", []) if isinstance(row, dict)]
    except (ArtifactError, NotFoundError, ValueError, AttributeError) as exc:
        return jsonable({"run_id": r.id, "error": str(exc), "heat_map": heat, "table": table, "trajectory": {}})
    trajectory: dict[str, list[list[float]]] = {}
    for m in store.get_metrics(db, series_source(r)):  # a cache hit: its original's
        if m.key in TRAJECTORY_KEYS and m.step is not None:
            trajectory.setdefault(m.key, []).append([m.step, m.value])
    return jsonable({"run_id": r.id, "series_of": series_source(r), "heat_map": heat, "table": table,
                     "trajectory": trajectory})


def heat_map(layers: dict[str, Any]) -> dict[str, Any]:
    """{"blocks": [...], "kinds": [...], "bits": [[bits or None per kind] per block]} from layer name -> {bits}."""
    cells: dict[tuple[int, str], float] = {}
    kinds: list[str] = []
    for name, entry in layers.items():
        match = _BLOCK.search(name)
        block = int(match.group(1)) if match else -1
        kind = name[match.end():] if match else name
        if kind not in kinds:
            kinds.append(kind)
        cells[(block, kind)] = entry.get("bits") if isinstance(entry, dict) else None
    blocks = sorted({b for b, _ in cells})
    return {"blocks": blocks, "kinds": kinds, "bits": [[cells.get((b, k)) for k in kinds] for b in blocks]}
