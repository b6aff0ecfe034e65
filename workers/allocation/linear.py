"""HIGGS-style linearity model: a configuration's KL to the model ≈ Σ_l α_l · err_l(b_l), fitted, then solved exactly.

Malinovskii et al. (2024, "Pushing the limits of LLM quantization via the linearity theorem", Thm. 1) show the
loss increase of a quantized model is, to first order, a weighted sum of the layers' relative errors, with
data-dependent weights α_l; fitted once, the budgeted allocation is a multiple-choice knapsack. Here err_l(b)
is the level database's output relative error ||(W - Ŵ)X||² / ||WX||² of layer l at level b, the weights are
α_l = a · (n_l / N) · β_l: a shared scale a (least squares), times the parameter share n_l / N (the `dp`
method's weighting, which is the model when every β_l = 1), times per-layer corrections β_l ≥ 0 fitted on
measured random configurations with a ridge penalty Σ (β_l - 1)² whose strength is chosen by cross-validation.

Pure numerics on arrays: `sample_configurations`, `fit`, `predict`; the search job measures the samples.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .levels import LevelDB


def layer_errors(db: LevelDB) -> np.ndarray:
    """err[l, b]: output relative error of layer l at level b (NaN-free: the database falls back to weight error)."""
    return np.array([[lv.rel_error for lv in layer.levels] for layer in db.layers], dtype=np.float64)


def parameter_shares(db: LevelDB) -> np.ndarray:
    sizes = np.array([layer.numel for layer in db.layers], dtype=np.float64)
    return sizes / sizes.sum()


def sample_configurations(n_levels: int, n_layers: int, centre: Sequence[int], count: int, mix: float,
                          rng: random.Random) -> list[list[int]]:
    """`count` distinct random configurations: each layer keeps its level of `centre` or, with probability
    `mix`, takes a uniformly random level (so the samples lie around the budget, where the fit is used)."""
    seen: set[tuple[int, ...]] = set()
    out: list[list[int]] = []
    for _ in range(count * 50):
        config = [rng.randrange(n_levels) if rng.random() < mix else int(centre[i]) for i in range(n_layers)]
        if tuple(config) not in seen:
            seen.add(tuple(config))
            out.append(config)
            if len(out) == count:
                break
    return out


def features(errors: np.ndarray, configs: Sequence[Sequence[int]]) -> np.ndarray:
    """X[j, l] = err_l(b_l of configuration j)."""
    idx = np.asarray(configs, dtype=np.int64)
    return errors[np.arange(errors.shape[0])[None, :], idx]


@dataclass(frozen=True)
class LinearFitResult:
    alpha: np.ndarray  # [L] weights of the per-layer errors
    scale: float  # a: the shared least-squares scale of Σ (n_l/N) err_l
    ridge: float  # the chosen strength
    cv_error: dict[float, float]  # mean squared cross-validation error per candidate strength


def _fit_beta(x: np.ndarray, y: np.ndarray, prior: np.ndarray, ridge: float) -> np.ndarray:
    """β ≥ 0 minimising ||(X ⊙ prior) β - y||² / ||y||² + ridge/L · ||β - 1||² (bounded least squares)."""
    from scipy.optimize import lsq_linear

    n_layers = x.shape[1]
    norm = max(float(np.linalg.norm(y)), 1e-30)
    z = x * prior[None, :] / norm
    penalty = math.sqrt(ridge / n_layers)
    a = np.vstack([z, penalty * np.eye(n_layers)])
    b = np.concatenate([y / norm, penalty * np.ones(n_layers)])
    return lsq_linear(a, b, bounds=(0.0, np.inf), method="bvls" if n_layers <= 64 else "trf").x


def _shared_scale(x: np.ndarray, y: np.ndarray, shares: np.ndarray) -> float:
    s = x @ shares
    return max(float(s @ y) / max(float(s @ s), 1e-300), 1e-30)


def fit(x: np.ndarray, y: np.ndarray, shares: np.ndarray, ridges: Sequence[float], folds: int = 4,
        seed: int = 0) -> LinearFitResult:
    """α for y ≈ X α: the shared scale, then β chosen among `ridges` by `folds`-fold cross-validation."""
    n = x.shape[0]
    order = np.random.default_rng(seed).permutation(n)
    parts = [order[k::folds] for k in range(min(folds, n))]
    cv: dict[float, float] = {}
    for ridge in ridges:
        errors = []
        for part in parts:
            train = np.setdiff1d(order, part)
            a = _shared_scale(x[train], y[train], shares)
            beta = _fit_beta(x[train], y[train], a * shares, ridge)
            errors.append(float(np.mean((x[part] @ (a * shares * beta) - y[part]) ** 2)))
        cv[float(ridge)] = float(np.mean(errors))
    best = min(cv, key=lambda r: (cv[r], -r))  # ties: the stronger ridge (closer to the dp prior)
    scale = _shared_scale(x, y, shares)
    beta = _fit_beta(x, y, scale * shares, best)
    return LinearFitResult(alpha=scale * shares * beta, scale=scale, ridge=best, cv_error=cv)


def predict(alpha: np.ndarray, errors: np.ndarray, configs: Sequence[Sequence[int]]) -> np.ndarray:
    return features(errors, configs) @ alpha


def losses(alpha: np.ndarray, errors: np.ndarray) -> list[list[float]]:
    """The knapsack's per-layer, per-level losses α_l · err_l(b)."""
    return (alpha[:, None] * errors).tolist()


def correlations(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float | None]:
    """Pearson and Spearman correlation of predictions with measurements (None with fewer than 3 points or no
    spread)."""
    if len(measured) < 3 or np.ptp(measured) == 0 or np.ptp(predicted) == 0:
        return {"pearson": None, "spearman": None}
    from scipy.stats import pearsonr, spearmanr

    return {"pearson": float(pearsonr(predicted, measured)[0]),
            "spearman": float(spearmanr(predicted, measured)[0])}


def probe_configurations(n_layers: int, levels: Sequence[int]) -> list[tuple[int, int]]:
    """(layer, level) of every single-layer probe: that layer at that level, every other layer unquantized."""
    return [(layer, level) for layer in range(n_layers) for level in levels]


def probe_losses(errors: np.ndarray, probes: Sequence[tuple[int, int]], measured: Sequence[float],
                 ) -> tuple[np.ndarray, list[list[float]]]:
    """(α, losses) from single-layer probes: α_l by least squares through the origin of layer l's measured KL on
    its errors at the probed levels (the linearity theorem's per-layer weight), losses[l][b] the measured KL where
    (l, b) was probed and α_l · err_l(b) elsewhere. Negative measurements (numerical noise) count as 0."""
    n_layers = errors.shape[0]
    num, den = np.zeros(n_layers), np.zeros(n_layers)
    known: dict[tuple[int, int], float] = {}
    for (layer, level), kl in zip(probes, measured):
        kl = max(float(kl), 0.0)
        known[(layer, level)] = kl
        num[layer] += kl * errors[layer, level]
        den[layer] += errors[layer, level] ** 2
    alpha = np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)
    table = alpha[:, None] * errors
    for (layer, level), kl in known.items():
        table[layer, level] = kl
    return alpha, table.tolist()
