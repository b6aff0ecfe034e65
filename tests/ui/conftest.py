"""A store filled by real CLI jobs (noop runs, a consumer, a two-objective sweep), shared by the UI tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOSTILE_NAME = "<script>alert(1)</script>"
FANOUT = 3
SERIES_POINTS = 20
SWEEP = """kind: sweep
name: ui-sweep
base: {kind: noop, payload: sweep}
strategy: grid
parameters:
  metrics: [1, 3, 5]
  payload: [a, b]
max_concurrency: 2
objectives: [{metric: noop/metrics_logged, goal: max}, {metric: noop/value, goal: min}]
"""


@dataclass
class UIStore:
    home: Path
    env: dict[str, str]
    hostile_run: str          # a noop run named HOSTILE_NAME, SERIES_POINTS metric points, tagged demo
    result_digest: str        # its output
    consumer_run: str         # a noop run that read result_digest
    sweep_id: str
    dataset_digest: str = ""  # a directory artifact (the arithmetic task)
    sweep_runs: list[str] = field(default_factory=list)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bitsmith.platform.cli.main", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=300)

    def settings(self):
        from bitsmith.platform.config import Settings

        return Settings(db_url=self.env["BITSMITH_DB_URL"], artifact_root=self.env["BITSMITH_ARTIFACT_ROOT"],
                        home=self.home)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _sweep_of(s: UIStore, run_id: str) -> str:
    return json.loads(_ok(s.cli("runs", "show", run_id, "--json")))["run"]["sweep_id"]


@pytest.fixture(scope="session")
def ui_store(tmp_path_factory) -> UIStore:
    home = tmp_path_factory.mktemp("ui") / "home"
    env = {**os.environ, "BITSMITH_HOME": str(home), "BITSMITH_DB_URL": f"sqlite:///{home / 'bitsmith.db'}",
           "BITSMITH_ARTIFACT_ROOT": str(home / "artifacts"), "RAY_USAGE_STATS_ENABLED": "0",
           "BITSMITH_NO_PROGRESS": "1"}
    env.pop("BITSMITH_UI_TOKEN", None)
    env.pop("BITSMITH_UI_WRITE_TOKEN", None)
    s = UIStore(home, env, "", "", "", "")
    specs = home / "specs"
    specs.mkdir(parents=True)
    (specs / "hostile.yaml").write_text(json.dumps({"kind": "noop", "name": HOSTILE_NAME, "metrics": SERIES_POINTS,
                                                    "payload": "hi", "tags": ["demo"]}))
    first = json.loads(_ok(s.cli("submit", str(specs / "hostile.yaml"), "--executor", "local", "--wait", "--json")))
    s.hostile_run, s.result_digest = first["run_id"], first["outputs"]["result"]
    (specs / "consumer.yaml").write_text(json.dumps({"kind": "noop", "name": "consumer", "metrics": 3,
                                                     "inputs": {"data": s.result_digest[:12]}}))
    second = json.loads(_ok(s.cli("submit", str(specs / "consumer.yaml"), "--executor", "local", "--wait", "--json")))
    s.consumer_run = second["run_id"]
    fanout = {"kind": "sweep", "name": "fanout", "strategy": "grid", "parameters": {"metrics": [1, 2, 3]},
              "base": {"kind": "noop", "inputs": {"data": s.result_digest[:12]}}}
    (specs / "fanout.yaml").write_text(json.dumps(fanout))  # FANOUT more consumers of result_digest
    _ok(s.cli("sweep", "run", str(specs / "fanout.yaml"), "--executor", "local", "--json"))
    (specs / "sweep.yaml").write_text(SWEEP)
    swept = json.loads(_ok(s.cli("sweep", "run", str(specs / "sweep.yaml"), "--executor", "local", "--json")))
    s.sweep_runs = [r["run_id"] for r in swept["rows"]]
    s.sweep_id = _sweep_of(s, s.sweep_runs[0])
    data = json.loads(_ok(s.cli("data", "arithmetic", "--n-train", "20", "--n-calibration", "2", "--n-test", "5",
                                "--max-operand", "9", "--json")))
    s.dataset_digest = data["digest"]
    return s


@pytest.fixture(scope="session")
def ui_db(ui_store):
    from bitsmith.platform import store

    return store.open_database(ui_store.env["BITSMITH_DB_URL"])
