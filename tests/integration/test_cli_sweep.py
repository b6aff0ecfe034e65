"""Sweeps through the real CLI: children run concurrently, repeats are cache hits, results ranked, resume."""
from __future__ import annotations


SWEEP = """kind: sweep
name: nsweep
base: {kind: noop, payload: sweep}
strategy: grid
parameters:
  metrics: [1, 3, 5]
  fail: [false, true]
constraints: ["not (fail and metrics != 3)"]
max_concurrency: 2
objectives: [{metric: noop/metrics_logged, goal: max}]
"""


def test_sweep_run_show_plot_and_resume(cli, tmp_path) -> None:
    path = cli.write_spec("s.yaml", SWEEP)
    res = cli("sweep", "run", path, "--executor", "local", "--json", check=False)
    rows = res.json()["rows"]
    assert len(rows) == 4  # 3 x 2 grid minus the 2 combinations the constraint skips
    assert [r["params"]["metrics"] for r in rows if r["status"] == "succeeded"] == [5, 3, 1]  # sorted, max first
    assert [r["pareto"] for r in rows if r["status"] == "succeeded"] == [True, False, False]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["params"] == {"metrics": 3, "fail": True}
    sweep_id = cli("runs", "list", "--json").json()[0]["sweep_id"]
    assert "nsweep" in cli("sweep", "status", sweep_id[:10]).out

    resumed = cli("sweep", "resume", sweep_id[:10], "--executor", "local", "--json", check=False)
    assert "1 children ran on resume" in resumed.err  # only the failed combination runs again
    assert len(cli("runs", "list", "--sweep", sweep_id, "--json").json()) == 5

    again = cli("sweep", "run", path, "--executor", "local", "--json", check=False)
    runs = cli("runs", "list", "--json", "--limit", "100").json()
    assert sum(1 for r in runs if r["cache_hit_of"]) == 3  # a new sweep of the same children hits the cache
    assert len(again.json()["rows"]) == 4


def test_sweep_plot_needs_two_objectives_and_writes_png(cli, tmp_path) -> None:
    spec = SWEEP.replace("objectives: [{metric: noop/metrics_logged, goal: max}]",
                         "objectives: [{metric: noop/metrics_logged, goal: max}, "
                         "{metric: noop/metrics_logged, goal: min}]").replace("fail: [false, true]", "fail: [false]")
    path = cli.write_spec("s2.yaml", spec)
    cli("sweep", "run", path, "--executor", "local")
    sweep_id = cli("runs", "list", "--json").json()[0]["sweep_id"]
    png = tmp_path / "pareto.png"
    cli("sweep", "show", sweep_id[:10], "--plot", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_stored_in_the_flat_form_of_earlier_versions_still_shows_and_resumes(cli) -> None:
    import json
    import sqlite3

    spec = SWEEP.replace("strategy: grid", "strategy: {type: random, samples: 3, seed: 1}").replace(
        "metrics: [1, 3, 5]", "metrics: {choices: [1, 3, 5]}").replace("fail: [false, true]", "fail: [false]")
    first = cli("sweep", "run", cli.write_spec("r.yaml", spec), "--executor", "local", "--json").json()
    with sqlite3.connect(cli.home / "bitsmith.db") as conn:  # as earlier versions stored every sweep
        (sweep_id, stored), = conn.execute("SELECT id, spec FROM sweeps").fetchall()
        canonical = json.loads(stored)
        assert canonical["strategy"] == {"type": "random", "samples": 3, "seed": 1}
        flat = {**canonical, "strategy": "random", "samples": 3, "seed": 1, "optuna": None}
        conn.execute("UPDATE sweeps SET spec = ?", (json.dumps(flat),))
    assert cli("sweep", "show", sweep_id[:10], "--json").json() == first
    assert "nsweep" in cli("sweep", "status", sweep_id[:10]).out
    resumed = cli("sweep", "resume", sweep_id[:10], "--executor", "local", "--json")
    assert "0 children ran on resume" in resumed.err and resumed.json() == first
