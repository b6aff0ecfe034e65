"""An optuna sweep through the real CLI: children chosen by TPE, ranked, and a finished sweep resumes to nothing."""
from __future__ import annotations

import pytest

pytest.importorskip("optuna")

SWEEP = """kind: sweep
name: osweep
base: {kind: noop, payload: optuna-cli}
strategy: optuna
optuna: {trials: 6, seed: 0}
parameters:
  metrics: {low: 0, high: 20, integer: true}
max_concurrency: 2
objectives: [{metric: noop/metrics_logged, goal: max}]
"""


def test_optuna_sweep_run_ranks_children_and_resume_has_nothing_left(cli) -> None:
    path = cli.write_spec("o.yaml", SWEEP)
    res = cli("sweep", "run", path, "--executor", "local", "--json")
    assert "6 children chosen by optuna (tpe)" in res.err
    rows = res.json()["rows"]
    assert len(rows) == 6 and all(r["status"] == "succeeded" for r in rows)
    logged = [r["metrics"]["noop/metrics_logged"] for r in rows]
    assert logged == sorted(logged, reverse=True) and logged == [r["params"]["metrics"] for r in rows]
    assert rows[0]["pareto"]

    sweep_id = cli("runs", "list", "--json").json()[0]["sweep_id"]
    resumed = cli("sweep", "resume", sweep_id[:10], "--executor", "local", "--json")
    assert "0 children ran on resume" in resumed.err
    assert len(resumed.json()["rows"]) == 6
