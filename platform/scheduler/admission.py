"""Admission by resources: what a run asks of the cluster, whether it fits what is free, and why it waits.

Resource names are Ray's (`CPU`, `GPU`, `memory` in bytes, custom names as given). The dispatcher uses these to
admit runs, and `bitsmith queue` uses the same functions on the dispatcher's last snapshot to say what each
queued run waits for.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SPEC_TO_RAY = {"cpus": "CPU", "gpus": "GPU", "memory_bytes": "memory"}
_IGNORED_PREFIXES = ("node:", "accelerator_type:", "object_store_memory")
EPSILON = 1e-9


def run_needs(spec: Mapping[str, Any]) -> dict[str, float]:
    """Ray resources a run's spec asks for (its `resources`; cpus default 1), zero amounts left out."""
    res = spec.get("resources") or {}
    needs = {"CPU": float(res.get("cpus", 1.0)), "GPU": float(res.get("gpus", 0.0)),
             "memory": float(res.get("memory_bytes") or 0)}
    needs.update({str(k): float(v) for k, v in (res.get("custom") or {}).items()})
    return {k: v for k, v in needs.items() if v > 0}


def schedulable(resources: Mapping[str, float]) -> dict[str, float]:
    """The resources a job can ask for, from Ray's view of the cluster (node markers and object store dropped)."""
    return {k: float(v) for k, v in resources.items() if not k.startswith(_IGNORED_PREFIXES)}


def fits(needs: Mapping[str, float], free: Mapping[str, float]) -> bool:
    return all(free.get(k, 0.0) + EPSILON >= v for k, v in needs.items())


def subtract(free: Mapping[str, float], needs: Mapping[str, float]) -> dict[str, float]:
    out = dict(free)
    for k, v in needs.items():
        out[k] = out.get(k, 0.0) - v
    return out


def waiting_reason(needs: Mapping[str, float], free: Mapping[str, float], total: Mapping[str, float]) -> str | None:
    """Why a run does not fit, e.g. 'needs 1 GPU, 0 free' or 'needs 4 CPU, the cluster has 2'; None if it fits."""
    for key, amount in needs.items():
        if total.get(key, 0.0) + EPSILON < amount:
            return f"needs {amount_text(key, amount)}, the cluster has {amount_text(key, total.get(key, 0.0), False)}"
    for key, amount in needs.items():
        if free.get(key, 0.0) + EPSILON < amount:
            return f"needs {amount_text(key, amount)}, {amount_text(key, max(free.get(key, 0.0), 0.0), False)} free"
    return None


def amount_text(key: str, amount: float, unit: bool = True) -> str:
    """'1 GPU', '2.5 CPU', '4.0 GiB memory' (without the name when `unit` is False)."""
    if key == "memory":
        text = f"{amount / 2**30:.1f} GiB"
        return f"{text} memory" if unit else text
    text = f"{amount:g}"
    return f"{text} {key}" if unit else text


def needs_text(needs: Mapping[str, float]) -> str:
    return ", ".join(amount_text(k, v) for k, v in needs.items()) or "nothing"
