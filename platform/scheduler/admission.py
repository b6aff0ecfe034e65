"""Admission by resources: what a run asks of the cluster, whether it fits what is free, and why it waits.

Resource names are Ray's (`CPU`, `GPU`, `memory` in bytes, custom names as given). The dispatcher uses these to
admit runs, and `bitsmith queue` uses the same functions on the dispatcher's last snapshot to say what each
queued run waits for.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from ..errors import UsageError
from ..specs.common import RESERVED_RESOURCES

SPEC_TO_RAY = {"cpus": "CPU", "gpus": "GPU", "memory_bytes": "memory"}
_IGNORED_PREFIXES = ("object_store_memory",)
_MARKER_PREFIXES = ("node:", "accelerator_type:")  # Ray's per-node markers: admitted on, not shown
EPSILON = 1e-9
RESOURCES_ENV = "BITSMITH_RAY_RESOURCES"


def run_needs(spec: Mapping[str, Any]) -> dict[str, float]:
    """Ray resources a run's spec asks for (its `resources`; cpus default 1), zero amounts left out."""
    res = spec.get("resources") or {}
    needs = {"CPU": float(res.get("cpus", 1.0)), "GPU": float(res.get("gpus", 0.0)),
             "memory": float(res.get("memory_bytes") or 0)}
    needs.update({str(k): float(v) for k, v in (res.get("custom") or {}).items()})
    return {k: v for k, v in needs.items() if v > 0}


def schedulable(resources: Mapping[str, float]) -> dict[str, float]:
    """The resources a job can ask for, from Ray's view of the cluster (the object store dropped)."""
    return {k: float(v) for k, v in resources.items() if not k.startswith(_IGNORED_PREFIXES)}


def shown(resources: Mapping[str, float]) -> dict[str, float]:
    """Resources as the CLI shows them: without Ray's `node:` / `accelerator_type:` markers."""
    return {k: v for k, v in resources.items() if not k.startswith(_MARKER_PREFIXES)}


def parse_node_resources(raw: str | None, field: str) -> dict[str, float] | None:
    """Custom resources an embedded Ray node declares, from JSON such as '{"accel": 1}' (`field` names where it
    came from: --resources or BITSMITH_RAY_RESOURCES); None when `raw` is empty; a UsageError otherwise."""
    if raw is None or not raw.strip():
        return None
    example = 'expected a JSON object of custom resource names and whole amounts, e.g. \'{"accel": 1}\''
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{field}: not JSON ({exc.msg}); {example}; got {raw!r}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{field}: {example}; got {raw!r}")
    out: dict[str, float] = {}
    for name, amount in data.items():
        if not name.strip():
            raise UsageError(f"{field}: a resource name must be a non-empty string; got {name!r}")
        if name.lower() in RESERVED_RESOURCES:
            raise UsageError(f"{field}: {name!r} is one of Ray's own resources (CPU, GPU, memory, "
                             "object_store_memory), not a custom one; expected another name (CPUs: --num-cpus)")
        if (isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount)
                or amount <= 0 or amount != int(amount)):
            raise UsageError(f"{field}.{name}: expected a whole amount >= 1 (Ray's node resources are whole "
                             f"numbers); got {amount!r}")
        out[name] = float(amount)
    return out


def env_node_resources() -> dict[str, float] | None:
    """`BITSMITH_RAY_RESOURCES`: the custom resources of an embedded Ray instance (JSON), or None."""
    return parse_node_resources(os.environ.get(RESOURCES_ENV), RESOURCES_ENV)


def fits(needs: Mapping[str, float], free: Mapping[str, float]) -> bool:
    return all(free.get(k, 0.0) + EPSILON >= v for k, v in needs.items())


def subtract(free: Mapping[str, float], needs: Mapping[str, float]) -> dict[str, float]:
    out = dict(free)
    for k, v in needs.items():
        out[k] = out.get(k, 0.0) - v
    return out


def waiting_reason(needs: Mapping[str, float], free: Mapping[str, float], total: Mapping[str, float]) -> str | None:
    """Why a run does not fit, e.g. 'needs 1 GPU, 0 free', 'needs 4 CPU, the cluster has 2' or 'needs 1 accel, the
    cluster has none'; None if it fits."""
    for key, amount in needs.items():
        if key not in total:
            return f"needs {amount_text(key, amount)}, the cluster has none"
        if total[key] + EPSILON < amount:
            return f"needs {amount_text(key, amount)}, the cluster has {amount_text(key, total[key], False)}"
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
