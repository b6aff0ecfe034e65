"""What each page shows, as plain JSON-ready dicts read from the store (the API and `bitsmith report` share them)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .. import store
from ..errors import NotFoundError, UsageError
from ..store.records import RunRecord
from .jsonable import jsonable
from .runquery import RunQuery, query_runs

MAX_POINTS = 5000       # per metric series; longer series are thinned evenly (the last point always kept)
LOG_CHUNK_BYTES = 256 << 10
MAX_COMPARE = 12
MAX_REPRODUCTIONS = 10


def run_brief(r: RunRecord, finals: dict[str, float]) -> dict[str, Any]:
    return jsonable({"id": r.id, "kind": r.kind, "name": r.name, "status": r.status, "tags": list(r.tags),
                     "sweep_id": r.sweep_id, "attempt": r.attempt, "cache_hit_of": r.cache_hit_of,
                     "created_at": r.created_at, "started_at": r.started_at, "finished_at": r.finished_at,
                     "metrics": finals})


def runs_page(db: Any, q: RunQuery) -> dict[str, Any]:
    page = query_runs(db, q)
    finals = store.final_metrics(db, [r.id for r in page.rows]) if page.rows else {}
    return {"rows": [run_brief(r, finals.get(r.id, {})) for r in page.rows], "next_cursor": page.next_cursor}


def _edges(db: Any, edges: list[Any]) -> list[dict[str, Any]]:
    out = []
    for e in edges:
        try:
            a = store.get_artifact(db, e.digest)
            kind, name, size = a.kind, a.name, a.size_bytes
        except NotFoundError:
            kind, name, size = None, None, None
        out.append({"role": e.role, "digest": e.digest, "kind": kind, "name": name, "size_bytes": size})
    return out


def run_page(db: Any, ref: str) -> dict[str, Any]:
    r = store.get_run(db, ref)
    finals = store.final_metrics(db, [r.id]).get(r.id, {})
    series: dict[str, int] = {}
    for m in store.get_metrics(db, series_source(r)):
        if m.step is not None:
            series[m.key] = series.get(m.key, 0) + 1
    return jsonable({
        "run": {**run_brief(r, finals), "spec_hash": r.spec_hash, "cache_key": r.cache_key, "seed": r.seed,
                "executor": r.executor, "host": r.host, "pid": r.pid, "max_retries": r.max_retries,
                "error": r.error, "traceback": r.traceback, "joins": r.joins, "cancel_requested": r.cancel_requested,
                "log_path": r.log_path},
        "spec_yaml": yaml.safe_dump(r.spec, sort_keys=False, allow_unicode=True),
        "code_version": {k: v for k, v in r.code_version.items() if k != "modules"},
        "code_modules": len(r.code_version.get("modules") or {}),
        "environment": r.environment,
        "inputs": _edges(db, store.run_inputs(db, r.id)),
        "outputs": _edges(db, store.run_outputs(db, r.id)),
        "events": store.run_events(db, r.id),
        "series": series,
        "series_of": series_source(r),
        "reproductions": reproductions(db, r),
    })


def series_source(r: Any) -> str:
    """The run whose metric series `r` shows: a cache hit has its original's final metrics and outputs but no
    series of its own, so it shows its original's."""
    return r.cache_hit_of or r.id


def metric_series(db: Any, ref: str, key: str | None = None) -> dict[str, Any]:
    """Each stepped metric series of the run (a cache hit: of its original) as [[step, value], ...] (thinned to
    MAX_POINTS), and the point counts."""
    r = store.get_run(db, ref)
    raw: dict[str, list[tuple[int, float]]] = {}
    for m in store.get_metrics(db, series_source(r), key):
        if m.step is not None:
            raw.setdefault(m.key, []).append((m.step, m.value))
    series, counts = {}, {}
    for k, points in raw.items():
        counts[k] = len(points)
        if len(points) > MAX_POINTS:
            stride = len(points) / MAX_POINTS
            points = [points[int(i * stride)] for i in range(MAX_POINTS - 1)] + [points[-1]]
        series[k] = [[s, v] for s, v in points]
    return jsonable({"run_id": r.id, "series_of": series_source(r), "series": series, "counts": counts})


def log_chunk(db: Any, settings: Any, ref: str, offset: int = 0) -> dict[str, Any]:
    """Up to LOG_CHUNK_BYTES of the run's log from byte `offset` (a cache hit shows its original's log)."""
    from ..scheduler.execute import run_log_path
    from ..store.records import TERMINAL_STATUSES

    if offset < 0:
        raise UsageError(f"offset {offset}: expected a byte offset >= 0")
    r = store.get_run(db, ref)
    source = store.get_run(db, r.cache_hit_of) if r.cache_hit_of else r
    path = Path(source.log_path) if source.log_path else run_log_path(settings, source.id)
    done = source.status in TERMINAL_STATUSES
    if not path.is_file():
        return {"run_id": r.id, "text": "", "offset": offset, "exists": False, "done": done}
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(LOG_CHUNK_BYTES)
    return {"run_id": r.id, "text": data.decode("utf-8", errors="replace"), "offset": offset + len(data),
            "exists": True, "done": done and len(data) < LOG_CHUNK_BYTES}


def _outputs(db: Any, run_id: str) -> dict[str, tuple[str, str]]:
    return {e["role"]: (e["digest"], e["kind"] or "") for e in _edges(db, store.run_outputs(db, run_id))
            if not e["role"].startswith("checkpoint/")}


def reproductions(db: Any, r: RunRecord) -> list[dict[str, Any]]:
    """Verdicts against the other runs of the same cache key that ran themselves (reproductions and originals)."""
    from ..reproduce import compare_runs

    original = store.get_run(db, r.cache_hit_of) if r.cache_hit_of else r
    others = [o for o in store.list_runs(db, cache_key=r.cache_key, limit=MAX_REPRODUCTIONS + 5)
              if o.id != original.id and not o.cache_hit_of and not o.joins and o.status in ("succeeded", "failed")]
    if original.status != "succeeded" or not others:
        return []
    finals = store.final_metrics(db, [original.id] + [o.id for o in others])
    out = []
    for o in others[:MAX_REPRODUCTIONS]:
        first, second = (original, o) if original.created_at <= o.created_at else (o, original)
        rep = compare_runs(first, second, _outputs(db, first.id), _outputs(db, second.id), finals[first.id],
                           finals[second.id])
        out.append({"original": first.id, "reproduction": second.id, "matches": rep.matches,
                    "reproduction_status": rep.reproduction_status,
                    "differing_outputs": [x["role"] for x in rep.outputs if not x["same"] and not x["volatile"]],
                    "differing_metrics": [x["key"] for x in rep.metrics if not x["same"] and not x["volatile"]],
                    "changed_modules": rep.changed_modules})
    return out


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def compare_page(db: Any, refs: list[str]) -> dict[str, Any]:
    """Spec fields that differ, final metrics side by side, and the stepped series each run has."""
    if not 1 <= len(refs) <= MAX_COMPARE:
        raise UsageError(f"compare: {len(refs)} runs; expected 1 to {MAX_COMPARE} run ids")
    runs = [store.get_run(db, ref) for ref in refs]
    finals = store.final_metrics(db, [r.id for r in runs])
    flats = [_flat(r.spec) for r in runs]
    keys = sorted(set().union(*flats))
    diff = [{"field": k, "values": [f.get(k) for f in flats]} for k in keys
            if len({repr(f.get(k)) for f in flats}) > 1]
    metric_keys = sorted({k for r in runs for k in finals.get(r.id, {})})
    series = {}
    for r in runs:
        series[r.id] = sorted({m.key for m in store.get_metrics(db, series_source(r)) if m.step is not None})
    return jsonable({"runs": [run_brief(r, finals.get(r.id, {})) for r in runs], "spec_diff": diff,
                     "metric_keys": metric_keys, "series": series})


def artifact_brief(a: Any) -> dict[str, Any]:
    return jsonable({"digest": a.digest, "kind": a.kind, "name": a.name, "size_bytes": a.size_bytes,
                     "is_dir": a.is_dir, "metadata": a.metadata, "producer_run_id": a.producer_run_id,
                     "created_at": a.created_at})


def artifacts_page(db: Any, *, kind: str | None, where: list[str], limit: int, cursor: str | None) -> dict[str, Any]:
    """One keyset page of the artifacts matching the `--where` filters, newest first (the store's paged query)."""
    from ..store import queries

    page = queries.find_artifacts(db, kind=kind, where=where, limit=limit, cursor=cursor)
    return {"rows": [artifact_brief(a) for a in page.rows], "next_cursor": page.next_cursor}


def artifact_page(db: Any, ref: str) -> dict[str, Any]:
    a = store.resolve_artifact_ref(db, ref)
    consumers = store.artifact_consumers(db, a.digest)
    producer = store.get_run(db, a.producer_run_id) if a.producer_run_id else None
    return jsonable({"artifact": artifact_brief(a),
                     "producer": {"id": producer.id, "kind": producer.kind, "name": producer.name,
                                  "status": producer.status} if producer else None,
                     "consumers": [{"run_id": e.run_id, "role": e.role} for e in consumers[:500]],
                     "consumer_count": len(consumers)})
