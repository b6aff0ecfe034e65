"""Shared session fixtures: the built-in corpus, an arithmetic task and a small trained LM.

They are built once and cached across test sessions under `.pytest_cache/bitsmith-fixtures/<key>/`,
where the key hashes the fixture's spec, the source of `workers/train.py` and `workers/data/*.py`,
and the Python/torch/transformers/tokenizers versions (an edit rebuilds). A file lock keeps parallel
sessions from building the same fixture twice; each is built in a temp dir and renamed into place.
Cached files are read-only: copy a fixture before changing it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import sys
import time
import uuid
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["BITSMITH_NO_PROGRESS"] = "1"

REPO = Path(__file__).resolve().parents[1]
FIXTURE_CACHE = REPO / ".pytest_cache" / "bitsmith-fixtures"

ARITHMETIC_SPEC = {"n_train": 2000, "n_test": 50, "n_calibration": 24, "min_operand": 0, "max_operand": 19,
                   "operations": ["+", "-"], "seed": 0}
# ~0.7 M parameters; ~30-60 s on one core; held-out ppl far below the unigram baseline.
TRAINED_LM_SPEC = {
    "kind": "train", "seed": 0, "inputs": {"corpus": "pydoc_corpus"},
    "mode": {"type": "pretrain", "arch": {"layers": 2, "hidden_size": 128, "heads": 4, "max_seq_len": 128},
             "tokenizer": {"vocab_size": 1024}},
    "optim": {"lr": 3e-3, "warmup_steps": 30}, "steps": 500, "batch_size": 8, "seq_len": 128,
    "eval_every_steps": 100, "checkpoint_every_steps": 10_000, "eval_batches": 4, "compute": {"threads": 1},
}


def fixture_key(name: str, spec: object) -> str:
    """`name-HASH` over the spec, the data/train sources and the library versions."""
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for path in [REPO / "workers" / "train.py", *sorted((REPO / "workers" / "data").glob("*.py"))]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update(sys.version.encode())
    for package in ("torch", "transformers", "tokenizers"):
        h.update(version(package).encode())
    return f"{name}-{h.hexdigest()[:16]}"


def cached_build(name: str, spec: object, build: Callable[[Path], None]) -> Path:
    """The cache dir of (name, spec), running `build(tmp_dir)` once if it is not there yet."""
    from filelock import FileLock

    final = FIXTURE_CACHE / fixture_key(name, spec)
    if final.is_dir():
        return final
    FIXTURE_CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if final.is_dir():
            return final
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            build(tmp)
            for dirpath, _, files in os.walk(tmp):
                for file in files:
                    os.chmod(Path(dirpath) / file, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    prune_stale(name, keep=final)
    return final


def prune_stale(name: str, keep: Path, min_age_s: float = 3600.0) -> None:
    """Delete this fixture's entries for older sources (untouched for `min_age_s`), so edits don't pile up."""
    now = time.time()
    for entry in FIXTURE_CACHE.glob(f"{name}-*"):
        if entry.is_dir() and entry != keep and now - entry.stat().st_mtime > min_age_s:
            shutil.rmtree(entry, ignore_errors=True)
            Path(str(entry) + ".lock").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def pydoc_corpus() -> Path:
    """A `format: text` dataset dir: Python's help topics + stdlib docstrings (~0.9 MB), 3 splits."""
    from bitsmith.workers.data.corpus import build_builtin_corpus

    return cached_build("pydoc-corpus", {}, lambda tmp: build_builtin_corpus(tmp / "dataset")) / "dataset"


@pytest.fixture(scope="session")
def arithmetic_data() -> Path:
    """A `format: prompts` dataset dir of +/- problems on 0..19 (no negatives); test/calibration never in train."""
    from bitsmith.workers.data.arithmetic import generate_arithmetic

    return cached_build("arithmetic", ARITHMETIC_SPEC,
                        lambda tmp: generate_arithmetic(tmp / "dataset", **ARITHMETIC_SPEC)) / "dataset"


def _train_lm(corpus: Path, tmp: Path) -> None:
    from bitsmith.platform.context import local_context
    from bitsmith.platform.specs.train import TrainSpec
    from bitsmith.workers import train

    ctx, _ = local_context(tmp / "work", {"corpus": corpus}, seed=TRAINED_LM_SPEC["seed"], run_id="fixture")
    outputs = train.run(TrainSpec.model_validate(TRAINED_LM_SPEC), ctx)
    shutil.move(outputs.artifacts["model"].path, tmp / "model")
    shutil.move(outputs.artifacts["report"].path, tmp / "report.json")
    shutil.rmtree(tmp / "work")


@pytest.fixture(scope="session")
def trained_lm(pydoc_corpus: Path) -> Path:
    """An HF model dir (LlamaForCausalLM, 2 x 128, vocab 1024, + tokenizer) pretrained on `pydoc_corpus`.

    Load it with `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`. Read-only.
    """
    spec = {**TRAINED_LM_SPEC, "corpus": pydoc_corpus.parent.name}
    return cached_build("trained-lm", spec, lambda tmp: _train_lm(pydoc_corpus, tmp)) / "model"


@pytest.fixture(scope="session")
def trained_lm_report(trained_lm: Path) -> dict:
    """The training report of `trained_lm`: {"metrics": {"eval/ppl", "unigram_ppl", ...}, "history": ...}."""
    return json.loads((trained_lm.parent / "report.json").read_text())


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database (not migrated) at 127.0.0.1:5432, dropped afterwards."""
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        pytest.skip("PostgreSQL does not answer at 127.0.0.1:5432")
    import psycopg

    name = f"bitsmith_pg_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    from bitsmith.platform.store import dispose_engines

    dispose_engines(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
