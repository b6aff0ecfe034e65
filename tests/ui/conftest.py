"""A store filled by real CLI jobs (noop runs, a consumer, a two-objective sweep, a sweep with a failing child, an
evo search on a tiny random Llama and its cache hit), shared by the UI tests."""
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
FLAKY = {"kind": "sweep", "name": "flaky", "strategy": "grid", "parameters": {"fail": [False, True]},
         "base": {"kind": "noop"}}  # one child fails: a sweep to resume
GENERATIONS = 4
# An evo search cheap enough for a fixture (a few seconds of work on a 2-block, hidden-32 random Llama): RTN levels
# at 2/3/4 bits per channel, GENERATIONS generations of 4 children, the uniform row from the same levels.
SEARCH = {"kind": "search", "name": "ui-search",
          "method": {"type": "evo", "generations": GENERATIONS, "offspring": 4, "fitness_sequences": 2,
                     "fitness_seq_len": 16, "stages": [{"survivors": 1, "sequences": 2}], "checkpoint_every": 100},
          "levels": {"bits": [2, 3, 4], "group_size": None, "sequences": 4, "seq_len": 32, "method": {"type": "rtn"},
                     "mse_clip": False},
          "report": {"uniform": "levels", "test_seq_len": 16, "test_max_chunks": 2, "bootstrap_resamples": 0,
                     "pareto_uniform_levels": False},
          "budget": {"type": "avg_bits", "bits_per_weight": 3.0}, "compute": {"device": "cpu"}}
SEARCH_TEXT_MODULES = ("json", "os", "subprocess", "pydoc", "textwrap", "argparse", "collections", "dataclasses",
                       "functools", "itertools", "logging", "pathlib", "re", "shutil", "socket", "string",
                       "threading", "typing", "unittest", "zipfile", "tarfile", "csv", "datetime", "decimal",
                       "fractions", "heapq", "inspect", "random")


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
    flaky_sweep_id: str = ""  # a sweep whose fail=true child failed
    flaky_runs: list[str] = field(default_factory=list)
    search_run: str = ""      # an evo search (GENERATIONS generations logged)
    search_hit: str = ""      # a cache hit of it (no metric rows of its own)
    corpus_digest: str = ""   # the text dataset the search calibrated on
    model_digest: str = ""    # the tiny model it searched

    @property
    def run_count(self) -> int:
        return 2 + FANOUT + len(self.sweep_runs) + len(self.flaky_runs) + 2

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
    (specs / "flaky.yaml").write_text(json.dumps(FLAKY))
    flaky = json.loads(_ok(s.cli("sweep", "run", str(specs / "flaky.yaml"), "--executor", "local", "--json")))
    s.flaky_runs = [r["run_id"] for r in flaky["rows"]]
    s.flaky_sweep_id = _sweep_of(s, s.flaky_runs[0])
    _search(s, home)
    return s


def _search(s: UIStore, home: Path) -> None:
    """A text dataset and a random tiny Llama (registered through the CLI), an evo search on them, its cache hit."""
    import importlib

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bitsmith.workers.data.tokenizer import train_tokenizer

    texts = [d for d in (importlib.import_module(m).__doc__ or "" for m in SEARCH_TEXT_MODULES) if len(d) > 200]
    folder = home / "texts"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"doc{i}.txt").write_text(text)
    s.corpus_digest = json.loads(_ok(s.cli("data", "import", str(folder), "--kind", "text", "--name", "ui-texts",
                                           "--json")))["digest"]
    tok = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id))
    model_dir = home / "tiny-llama"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    s.model_digest = json.loads(_ok(s.cli("models", "import", str(model_dir), "--name", "ui-tiny-llama",
                                          "--json")))["digest"]
    spec = home / "specs" / "search.json"
    spec.write_text(json.dumps({**SEARCH, "inputs": {"model": s.model_digest, "calibration": s.corpus_digest}}))
    first = json.loads(_ok(s.cli("submit", str(spec), "--executor", "local", "--wait", "--json")))
    assert first["status"] == "succeeded" and not first["cache_hit"], first
    s.search_run = first["run_id"]
    again = json.loads(_ok(s.cli("submit", str(spec), "--executor", "local", "--wait", "--json")))
    assert again["cache_hit_of"] == s.search_run, again
    s.search_hit = again["run_id"]


@pytest.fixture(scope="session")
def ui_db(ui_store):
    from bitsmith.platform import store

    return store.open_database(ui_store.env["BITSMITH_DB_URL"])
