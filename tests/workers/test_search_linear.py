"""The HIGGS-style `linear` method and the search report's paired bootstrap: synthetic arrays and the test LM."""
from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
import torch

from bitsmith.platform.context import local_context
from bitsmith.platform.errors import SpecError
from bitsmith.platform.specs import parse_spec
from bitsmith.workers import search
from bitsmith.workers.allocation import bootstrap, knapsack, linear

torch.set_num_threads(1)
# As tests/workers/test_search.py: plain GPTQ per-channel levels, where 2-4 bits hurt the small model measurably.
LEVELS = {"bits": [2, 3, 4], "group_size": None, "sequences": 32, "seq_len": 128, "method": {"type": "gptq"},
          "mse_clip": False}
LINEAR = {"type": "linear", "samples": 30, "holdout": 0.3, "fitness_sequences": 4, "fitness_seq_len": 128}


# -- the fit and the solver on synthetic numbers ----------------------------------------------------
def _synthetic(n_layers: int = 12, n_levels: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    errors = np.sort(rng.uniform(0.01, 1.0, size=(n_layers, n_levels)), axis=1)[:, ::-1].copy()  # falls with bits
    shares = np.full(n_layers, 1 / n_layers)
    alpha = shares * rng.uniform(0.2, 3.0, size=n_layers)  # layers differ in how much their error costs
    return errors, shares, alpha


def test_the_fit_predicts_held_out_configurations_and_beats_the_parameter_prior() -> None:
    errors, shares, alpha = _synthetic()
    configs = linear.sample_configurations(3, 12, [1] * 12, 80, 0.5, random.Random(0))
    assert len({tuple(c) for c in configs}) == 80
    x = linear.features(errors, configs)
    y = x @ alpha * (1 + 0.02 * np.random.default_rng(1).standard_normal(80))  # 2 % measurement noise
    fitted = linear.fit(x[20:], y[20:], shares, (0.01, 0.1, 1.0, 10.0))
    predicted = x[:20] @ fitted.alpha
    corr = linear.correlations(predicted, y[:20])
    assert corr["pearson"] > 0.9 and corr["spearman"] > 0.8
    prior = x[:20] @ (linear._shared_scale(x[20:], y[20:], shares) * shares)  # dp's weighting, rescaled
    assert np.mean((predicted - y[:20]) ** 2) < np.mean((prior - y[:20]) ** 2)


def test_a_strong_ridge_leaves_the_dp_weighting() -> None:
    errors, shares, alpha = _synthetic(seed=2)
    configs = linear.sample_configurations(3, 12, [1] * 12, 40, 0.5, random.Random(2))
    x = linear.features(errors, configs)
    fitted = linear.fit(x, x @ alpha, shares, (1e9,))
    ratio = fitted.alpha / shares
    assert np.allclose(ratio, ratio[0], rtol=1e-3)  # every β_l = 1: α ∝ parameter share


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_integer_program_over_fitted_losses_equals_brute_force(seed: int) -> None:
    errors, shares, alpha = _synthetic(n_layers=6, seed=seed)
    rng = random.Random(seed)
    costs = [[rng.choice([1, 2, 3]) * b * 64 for b in (2, 3, 4)] for _ in range(6)]
    losses = linear.losses(alpha, errors)
    budget = int(sum(row[1] for row in costs) * 0.9)
    best = min((c for c in itertools.product(range(3), repeat=6) if knapsack.allocation_cost(costs, c) <= budget),
               key=lambda c: sum(losses[i][lv] for i, lv in enumerate(c)))
    for solver in ("milp", "dp"):
        got = knapsack.solve(solver, costs, losses, budget)
        assert knapsack.allocation_cost(costs, got) <= budget
        assert sum(losses[i][lv] for i, lv in enumerate(got)) == pytest.approx(
            sum(losses[i][lv] for i, lv in enumerate(best)), rel=1e-9)


def test_linear_settings_are_checked() -> None:
    base = {"kind": "search", "inputs": {"model": "m", "calibration": "c"},
            "budget": {"type": "avg_bits", "bits_per_weight": 3.0}}
    with pytest.raises(SpecError, match="samples"):
        parse_spec({**base, "method": {"type": "linear", "samples": 4, "holdout": 0.5}})
    with pytest.raises(SpecError, match="ridge"):
        parse_spec({**base, "method": {"type": "linear", "ridge": [0.0]}})
    spec = parse_spec({**base, "method": {"type": "evo", "init": "linear", "linear": {"samples": 8}}})
    assert spec.method.linear.samples == 8


# -- the bootstrap ------------------------------------------------------------------------------------
def test_the_paired_bootstrap_is_zero_for_identical_chunks_and_resamples_pairs() -> None:
    rng = np.random.default_rng(0)
    nll = rng.uniform(300, 500, size=24)
    same = bootstrap.paired_ppl_difference(nll, nll, [127] * 24)
    assert same["delta_ppl"] == 0 and same["delta_ppl_ci"] == [0.0, 0.0]
    # a model worse on every chunk by a little, with chunk-to-chunk spread far larger than the difference:
    worse = bootstrap.paired_ppl_difference(nll + 2.0, nll, [127] * 24)
    assert worse["delta_ppl"] > 0 and bootstrap.excludes_zero(worse["delta_ppl_ci"])
    low, high = worse["delta_pct_ci"]
    assert low <= worse["delta_pct"] <= high
    # unpaired noise of the same size as the difference: the interval contains 0
    noisy = bootstrap.paired_ppl_difference(nll + rng.normal(0, 20, size=24), nll, [127] * 24)
    assert not bootstrap.excludes_zero(noisy["delta_ppl_ci"])


# -- the method on the test LM -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def linear_run(trained_lm, pydoc_corpus, tmp_path_factory):
    spec = parse_spec({"kind": "search", "seed": 0, "inputs": {"model": "m", "calibration": "c"}, "method": LINEAR,
                       "levels": LEVELS, "report": {"uniform": "levels", "test_max_chunks": 16},
                       "budget": {"type": "effective_bits", "bits_per_weight": 3.2}})
    ctx, _ = local_context(tmp_path_factory.mktemp("linear"), {"model": trained_lm, "calibration": pydoc_corpus})
    result = search.run(spec, ctx)
    return spec, json.loads(result.artifacts["report"].path.read_text())


def test_the_linear_model_predicts_held_out_configurations_of_the_real_model(linear_run) -> None:
    _, report = linear_run
    held = report["details"]["held_out"]
    assert held["configurations"] == 9
    assert held["pearson"] > 0 and held["spearman"] > 0
    solution = report["details"]["solution"]
    assert solution["measured_kl"] > 0 and solution["predicted_kl"] > 0


def test_the_linear_allocation_meets_the_effective_bits_budget(linear_run) -> None:
    spec, report = linear_run
    table = {row["method"]: row for row in report["table"]}
    assert {"linear", "uniform", "dp"} <= table.keys()
    assert table["linear"]["effective_bits_per_weight"] <= spec.budget.bits_per_weight + 1e-9
    assert table["uniform"]["effective_bits_per_weight"] <= spec.budget.bits_per_weight
    assert report["summary"]["vs_uniform"]["linear"]["test_token_ppl"] == table["linear"]["test_token_ppl"]


def test_the_report_bootstraps_each_row_against_uniform_from_its_chunks(linear_run) -> None:
    _, report = linear_run
    table = {row["method"]: row for row in report["table"]}
    uniform_level = {3: "uniform-3bit", 2: "uniform-2bit"}
    assert table["uniform"]["avg_bits"] == 3  # so uniform-3bit is the same model on the same chunks
    same = table[uniform_level[3]]["vs_uniform"]
    assert same["chunks"] == len(table["uniform"]["test_chunk_nll"]) == 16
    assert same["delta_ppl"] == 0 and same["delta_ppl_ci"] == [0.0, 0.0]
    worse = table[uniform_level[2]]["vs_uniform"]
    assert worse["delta_ppl"] > 0 and worse["delta_ppl_ci"][0] > 0
    nll = np.asarray(table["linear"]["test_chunk_nll"])
    assert table["linear"]["test_token_ppl"] == pytest.approx(float(np.exp(nll.sum() / (16 * 127))))


def test_evo_warm_started_from_the_linear_model_reports_it_as_a_row(trained_lm, pydoc_corpus, tmp_path) -> None:
    method = {"type": "evo", "generations": 2, "offspring": 4, "fitness_sequences": 8, "fitness_seq_len": 64,
              "stages": [{"survivors": 1, "sequences": 4}], "init": "linear",
              "linear": {"samples": 8, "holdout": 0.0}}
    spec = parse_spec({"kind": "search", "seed": 0, "inputs": {"model": "m", "calibration": "c"}, "method": method,
                       "levels": LEVELS, "report": {"uniform": "levels", "test_max_chunks": 4,
                                                    "pareto_uniform_levels": False},
                       "budget": {"type": "effective_bits", "bits_per_weight": 3.2}})
    ctx, _ = local_context(tmp_path, {"model": trained_lm, "calibration": pydoc_corpus})
    report = json.loads(search.run(spec, ctx).artifacts["report"].path.read_text())
    table = {row["method"]: row for row in report["table"]}
    assert {"evo", "linear", "uniform", "dp"} <= table.keys()
    assert report["details"]["init"] == "linear" and report["details"]["linear"]["samples"] == 8
    assert table["linear"]["effective_bits_per_weight"] <= 3.2
    assert {"evo", "linear", "dp"} <= report["summary"]["vs_uniform"].keys()
