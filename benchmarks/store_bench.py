"""Store write throughput: bitsmith's embedded SQLite store against MLflow's SQLAlchemy tracking store.

One "run" is what a job leaves behind in the store:
  bitsmith: register an input artifact, create_run (with that input edge), log_metrics (one batch of
            20), register the output artifact and add_run_outputs (the output edge);
  MLflow:   create_run, log_batch (the same 20 metrics), log_inputs (a dataset input) and set_tag
            (its nearest equivalent of an output edge).
Both stores sit on a fresh SQLite file in a temp dir; store creation and migrations are not timed.
bitsmith runs SQLite in WAL mode with synchronous=NORMAL (durable across process crashes, not
necessarily across power loss); MLflow keeps SQLite's defaults (rollback journal, fsync at every
commit). The "synchronous=FULL" row makes bitsmith fsync at every commit too, for a like-for-like view.
MLflow is optional (`pip install mlflow-skinny`); without it only bitsmith is measured.

    python benchmarks/store_bench.py [--runs 500] [--metrics 20] [--out benchmarks/results/store_bench.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "store_bench.json"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bench_bitsmith(root: Path, runs: int, metrics: int, synchronous_full: bool = False) -> dict:
    from sqlalchemy import event

    from bitsmith.platform.store import (add_run_outputs, create_run, log_metrics, open_database,
                                         register_artifact)

    name = "bitsmith-full" if synchronous_full else "bitsmith"
    db = open_database(f"sqlite:///{root / name / 'bitsmith.db'}")  # creates + migrates (not timed)
    if synchronous_full:  # fsync at every commit, like MLflow's default rollback journal
        db.engine.dispose()
        event.listen(db.engine, "connect", lambda conn, _: conn.execute("PRAGMA synchronous = FULL"))
    spec = {"kind": "quantize", "method": {"name": "gptq", "bits": 4, "group_size": 128}, "seed": 0}
    start = time.perf_counter()
    for i in range(runs):
        source = register_artifact(db, digest=_digest(f"in-{i}"), kind="dataset", name="corpus", uri=f"file:///in/{i}",
                                   size_bytes=1000, is_dir=False, metadata={"rows": i}, producer_run_id=None)
        run = create_run(db, kind="quantize", name=f"run-{i}", spec=spec, spec_hash=_digest("spec"),
                         cache_key=_digest(f"key-{i}"), seed=0, code_version={"package": "0.1.0"}, tags=("bench",),
                         executor="local", max_retries=0, inputs={"corpus": source.digest})
        log_metrics(db, run.id, [(f"metric_{k}", i, float(k)) for k in range(metrics)])
        out = register_artifact(db, digest=_digest(f"out-{i}"), kind="quantized-model", name=None,
                                uri=f"file:///out/{i}", size_bytes=2000, is_dir=False, metadata={"bits": 4},
                                producer_run_id=run.id)
        add_run_outputs(db, run.id, {"qmodel": out.digest})
    seconds = time.perf_counter() - start
    return {"runs": runs, "seconds": seconds, "runs_per_s": runs / seconds}


def bench_mlflow(root: Path, runs: int, metrics: int) -> dict:
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from mlflow.entities import Dataset, DatasetInput, Metric, RunTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    (root / "mlflow").mkdir()
    store = SqlAlchemyStore(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}", str(root / "mlflow" / "artifacts"))
    experiment_id = store.create_experiment("bench")
    start = time.perf_counter()
    for i in range(runs):
        now_ms = int(time.time() * 1000)
        run = store.create_run(experiment_id, "bench", now_ms, [RunTag("kind", "quantize")], f"run-{i}")
        run_id = run.info.run_id
        store.log_batch(run_id, [Metric(f"metric_{k}", float(k), now_ms, i) for k in range(metrics)], [], [])
        store.log_inputs(run_id, [DatasetInput(Dataset("corpus", _digest(f"in-{i}")[:36], "local",
                                                       f"file:///in/{i}"))])
        store.set_tag(run_id, RunTag("output.qmodel", _digest(f"out-{i}")))
    seconds = time.perf_counter() - start
    return {"runs": runs, "seconds": seconds, "runs_per_s": runs / seconds}


def _mlflow_version() -> str | None:
    try:
        from importlib.metadata import version

        for name in ("mlflow", "mlflow-skinny"):
            try:
                return f"{name} {version(name)}"
            except Exception:
                continue
    except Exception:
        pass
    return None


def _print_table(results: dict) -> None:
    rows = [(name, f"{r['runs']}", f"{r['seconds']:.2f}", f"{r['runs_per_s']:.1f}")
            for name, r in results["stores"].items()]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"store write throughput ({results['metrics_per_run']} metrics + 2 edges per run)")
        for column in ("store", "runs", "seconds", "runs/s"):
            table.add_column(column, justify="left" if column == "store" else "right")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    except ImportError:
        print(f"{'store':<12}{'runs':>8}{'seconds':>10}{'runs/s':>10}")
        for row in rows:
            print(f"{row[0]:<12}{row[1]:>8}{row[2]:>10}{row[3]:>10}")
    if results.get("ratio") is not None:
        print(f"bitsmith / mlflow: {results['ratio']:.1f}x (synchronous=FULL: {results['ratio_full']:.1f}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--metrics", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    results: dict = {"runs": args.runs, "metrics_per_run": args.metrics, "python": sys.version.split()[0],
                     "sqlite": sqlite3.sqlite_version, "machine": platform.machine(), "cpus": os.cpu_count(),
                     "mlflow": _mlflow_version(), "stores": {}, "ratio": None, "ratio_full": None}
    with tempfile.TemporaryDirectory(prefix="bitsmith-store-bench-") as tmp:
        root = Path(tmp)
        results["stores"]["bitsmith"] = bench_bitsmith(root, args.runs, args.metrics)
        results["stores"]["bitsmith (synchronous=FULL)"] = bench_bitsmith(root, args.runs, args.metrics, True)
        try:
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
        except ImportError as exc:
            print(f"MLflow is not installed ({exc}); measuring bitsmith only. "
                  "Install it with `pip install mlflow-skinny` to compare.", file=sys.stderr)
        else:
            results["stores"]["mlflow"] = bench_mlflow(root, args.runs, args.metrics)
            stores = results["stores"]
            results["ratio"] = stores["bitsmith"]["runs_per_s"] / stores["mlflow"]["runs_per_s"]
            full = stores["bitsmith (synchronous=FULL)"]["runs_per_s"]
            results["ratio_full"] = full / stores["mlflow"]["runs_per_s"]
    _print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
