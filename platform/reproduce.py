"""Compare a reproduction with its original run: output digests, metrics, environment, code."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

# Outputs and metrics that legitimately vary between identical computations (wall-clock timings, and
# reports/plots that carry them). They are shown but do not decide match vs drift.
VOLATILE_KINDS = frozenset({"report", "plot", "log"})
VOLATILE_METRIC = re.compile(r"(seconds|_s$|per_s|time|throughput|tokens_per)", re.IGNORECASE)


@dataclass
class ReproductionReport:
    original_id: str
    reproduction_id: str
    outputs: list[dict[str, Any]] = field(default_factory=list)   # role, original, reproduced, same, volatile
    metrics: list[dict[str, Any]] = field(default_factory=list)   # key, original, reproduced, rel_diff, same, volatile
    environment_diff: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    code_diff: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    # module -> "changed" | "added" | "removed" between the two code fingerprints; None when a run
    # was recorded before fingerprints (its code_version has no per-module digests)
    changed_modules: dict[str, str] | None = None
    reproduction_status: str = ""

    @property
    def matches(self) -> bool:
        return (self.reproduction_status == "succeeded"
                and all(o["same"] for o in self.outputs if not o["volatile"])
                and all(m["same"] for m in self.metrics if not m["volatile"]))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _diff(a: dict[str, Any], b: dict[str, Any], ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    fa, fb = _flatten(a), _flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k) and not k.startswith(ignore)}


def compare_runs(original: Any, reproduction: Any, orig_outputs: dict[str, tuple[str, str]],
                 repro_outputs: dict[str, tuple[str, str]], orig_metrics: dict[str, float],
                 repro_metrics: dict[str, float], rel_tol: float = 0.0) -> ReproductionReport:
    """`*_outputs`: role -> (digest, kind), checkpoints excluded. Metrics compare exactly unless rel_tol > 0."""
    report = ReproductionReport(original.id, reproduction.id, reproduction_status=reproduction.status)
    for role in sorted(set(orig_outputs) | set(repro_outputs)):
        o, r = orig_outputs.get(role), repro_outputs.get(role)
        kind = (o or r)[1]
        report.outputs.append({"role": role, "kind": kind, "original": o[0] if o else None,
                               "reproduced": r[0] if r else None, "same": bool(o and r and o[0] == r[0]),
                               "volatile": kind in VOLATILE_KINDS})
    for key in sorted(set(orig_metrics) | set(repro_metrics)):
        a, b = orig_metrics.get(key), repro_metrics.get(key)
        if a is None or b is None:
            same, rel = False, None
        else:
            rel = 0.0 if a == b else abs(a - b) / max(abs(a), abs(b), 1e-300)
            same = a == b or (math.isnan(a) and math.isnan(b)) or rel <= rel_tol
        report.metrics.append({"key": key, "original": a, "reproduced": b, "rel_diff": rel, "same": same,
                               "volatile": bool(VOLATILE_METRIC.search(key))})
    report.environment_diff = _diff(original.environment, reproduction.environment, ignore=("host",))
    report.code_diff = _diff(original.code_version, reproduction.code_version, ignore=("modules.",))
    report.changed_modules = changed_modules(original.code_version, reproduction.code_version)
    return report


def changed_modules(original: dict[str, Any], reproduction: dict[str, Any]) -> dict[str, str] | None:
    """Module -> "changed" | "added" | "removed" between two runs' code fingerprints (None: one has none)."""
    a, b = (original or {}).get("modules"), (reproduction or {}).get("modules")
    if not isinstance(a, dict) or not isinstance(b, dict):
        return None
    return {m: "added" if m not in a else "removed" if m not in b else "changed"
            for m in sorted(set(a) | set(b)) if a.get(m) != b.get(m)}
