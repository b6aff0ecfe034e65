"""Paired bootstrap confidence intervals of a perplexity difference between two models on the same chunks.

Both models are scored on the same test chunks; a resample draws chunk indices with replacement (the same
indices for both: paired) and recomputes each token perplexity exp(Σ NLL / Σ tokens) over the drawn chunks.
The interval is the percentile interval of the resampled differences (Efron & Tibshirani, 1993, ch. 13).
Identical per-chunk numbers give a difference of exactly 0 in every resample, so an interval of width 0.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def token_ppl(nll: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """exp(Σ nll / Σ tokens) along the last axis."""
    return np.exp(nll.sum(-1) / tokens.sum(-1))


def paired_ppl_difference(nll: Sequence[float], baseline_nll: Sequence[float], tokens: Sequence[int],
                          resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Δppl = ppl(model) - ppl(baseline) and its relative form in percent, each with a paired bootstrap
    `level` interval over chunks. `nll[c]`, `baseline_nll[c]`: summed next-token NLL of chunk c; `tokens[c]`:
    tokens predicted in it (the same for both models)."""
    a, b, n = (np.asarray(v, dtype=np.float64) for v in (nll, baseline_nll, tokens))
    if not (a.shape == b.shape == n.shape) or a.ndim != 1 or a.size == 0:
        raise ValueError(f"per-chunk arrays of one equal length expected; got {a.shape}, {b.shape}, {n.shape}")
    ppl_a, ppl_b = float(token_ppl(a, n)), float(token_ppl(b, n))
    out: dict[str, Any] = {"delta_ppl": ppl_a - ppl_b, "delta_pct": 100 * (ppl_a / ppl_b - 1), "chunks": int(a.size),
                           "resamples": int(resamples), "level": level}
    if resamples <= 0:
        return out
    idx = np.random.default_rng(seed).integers(0, a.size, size=(resamples, a.size))
    ra, rb = token_ppl(a[idx], n[idx]), token_ppl(b[idx], n[idx])
    tail = 100 * (1 - level) / 2
    for key, values in (("delta_ppl", ra - rb), ("delta_pct", 100 * (ra / rb - 1))):
        low, high = np.percentile(values, [tail, 100 - tail])
        out[f"{key}_ci"] = [float(low), float(high)]
    return out


def excludes_zero(interval: Sequence[float]) -> bool:
    return interval[0] > 0 or interval[1] < 0


def paired_mean_difference(values: Sequence[float], baseline: Sequence[float], resamples: int = 2000,
                           level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """mean(values) - mean(baseline) over paired items (e.g. per-question correctness), with a paired
    bootstrap `level` interval."""
    a, b = np.asarray(values, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired arrays of one equal length expected; got {a.shape}, {b.shape}")
    out: dict[str, Any] = {"delta": float(a.mean() - b.mean()), "items": int(a.size), "resamples": int(resamples),
                           "level": level}
    if resamples > 0:
        idx = np.random.default_rng(seed).integers(0, a.size, size=(resamples, a.size))
        tail = 100 * (1 - level) / 2
        low, high = np.percentile(a[idx].mean(-1) - b[idx].mean(-1), [tail, 100 - tail])
        out["delta_ci"] = [float(low), float(high)]
    return out
