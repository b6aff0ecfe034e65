"""Page-query latency at scale: the UI's and CLI's store queries on a filled store, beside MLflow's search_runs.

The store is filled through the store's own row builders and insert functions (`runs._new_run_rows`,
`metrics.insert_metrics`, which also keeps the metric summary), 1,000 runs a transaction:
  1 base model (the hub) -> R/5 quantize runs (each: the base in, one quantized model out)
  -> 4R/5 eval runs (each: one quantized model in, a report out while artifacts last), the children of
  sweeps of 50.
Each run logs M/R metric rows (two keys over steps); eval runs' final `test/token_ppl` is uniform in [10, 100].
MLflow gets the same runs and metric rows (bulk SQL into the schema MlflowClient created, latest_metrics
included) and is queried through `MlflowClient.search_runs` with the same filter, order and page size.

No ANALYZE is run (a real store has no planner statistics either). Timed (p50/p95 over --repeats, warm caches):
  runs_page       list_runs(status=succeeded, test/token_ppl < 50, sort metric:test/token_ppl asc, 50 rows)
                  + the page's final metrics (what the runs page shows)
  runs_page_next  the same query, following next_cursor one page further each repeat
  runs_newest     the default listing (newest first, 50 rows) + final metrics
  run_page        a random run: record, inputs, outputs, final metrics, events, metric curves
  lineage_hub     lineage_page down from the base model (50 siblings a node, 500 nodes a level)
  lineage_up      lineage_page up from a random eval run
  artifact_query  find_artifacts(kind=report, meta.bits<=3, 50 rows)
  sweeps_page     list_sweeps (the UI's sweeps list: newest 50 sweeps, each with its child count)
  sweeps_page_next  the same, following next_cursor one page further each repeat
  mlflow_search   MlflowClient.search_runs (filter, order, max_results=50)
With --cli, the CLI commands of issue 16 are timed too (wall, median of 3) with their output sizes.

    nice -n 10 python benchmarks/ui_bench.py [--runs 100000] [--metric-rows 2000000] [--artifacts 100000]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results" / "ui_bench.json"
CHUNK = 1000
SWEEP_SIZE = 50  # eval runs per sweep
PPL = "test/token_ppl"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _layout(runs: int, artifacts: int) -> tuple[int, int, int]:
    """(quantize runs, eval runs, reports) for `runs` runs and about `artifacts` artifacts."""
    quantize = max(1, runs // 5)
    evals = runs - quantize
    return quantize, evals, max(0, min(evals, artifacts - 1 - quantize))


def _metric_batch(rng: random.Random, kind: str, per_run: int) -> tuple[list[tuple[str, int, float]], float]:
    keys = (PPL, "loss") if kind == "eval" else ("mean_rel_error", "loss")
    steps = max(1, per_run // 2)
    final = rng.uniform(10.0, 100.0)
    batch = []
    for key in keys:
        for step in range(steps):
            value = final if (key == keys[0] and step == steps - 1) else rng.uniform(0.0, 200.0)
            batch.append((key, step, value))
    return batch[:per_run] if per_run >= 2 else batch[:1], final


def fill_bitsmith(db: Any, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    """Fill `db` through the store's row builders; returns what the queries need (hub digest, run ids, rows)."""
    from sqlalchemy import insert

    from bitsmith.platform.store.engine import write
    from bitsmith.platform.store.metrics import insert_metrics
    from bitsmith.platform.store.runs import _new_run_rows
    from bitsmith.platform.store.records import new_id
    from bitsmith.platform.store.schema import (artifacts_t, run_events_t, run_inputs_t, run_outputs_t, runs_t,
                                                sweeps_t, utcnow)

    quantize, evals, reports = _layout(args.runs, args.artifacts)
    per_run = max(1, args.metric_rows // args.runs)
    base = _digest("base-model")
    now = utcnow()

    def artifact(digest: str, kind: str, producer: str | None, meta: dict) -> dict:
        return {"digest": digest, "kind": kind, "name": None, "uri": f"file:///bench/{digest[:16]}", "size_bytes": 1000,
                "is_dir": False, "metadata": meta, "producer_run_id": producer, "created_at": utcnow(),
                "digest_version": 2}

    write(db, lambda conn: conn.execute(insert(artifacts_t), [artifact(base, "model", None, {"params": 135e6})]))
    # the eval runs are the children of sweeps of SWEEP_SIZE (what the UI's sweeps list pages through)
    sweep_ids = [new_id() for _ in range(max(1, evals // SWEEP_SIZE))]
    write(db, lambda conn: conn.execute(insert(sweeps_t), [
        {"id": sid, "name": f"sweep-{n}", "spec": {"kind": "sweep"}, "status": "succeeded", "created_at": utcnow(),
         "resolved_inputs": None} for n, sid in enumerate(sweep_ids)]))
    qmodels: list[str] = []
    eval_ids: list[str] = []
    metric_rows = 0
    spec = {"kind": "eval", "tasks": [{"type": "perplexity"}], "resources": {"cpus": 1.0}}
    statuses = ["succeeded"] * 18 + ["failed", "running"]

    def chunk(start: int, count: int, kind: str) -> None:
        nonlocal metric_rows
        runs, inputs, events, outs, arts, batches = [], [], [], [], [], []
        for i in range(start, start + count):
            model = base if kind == "quantize" else qmodels[i % len(qmodels)]
            values, edges, event = _new_run_rows(
                kind=kind, name=f"{kind}-{i}", spec=spec, spec_hash=_digest(f"s{i}"), cache_key=_digest(f"{kind}{i}"),
                seed=i, code_version={"package": "0.1.0"}, tags=("bench", f"group-{i % 10}"), executor="local",
                max_retries=0, inputs={"model": model}, cache_hit_of=None,
                sweep_id=sweep_ids[i % len(sweep_ids)] if kind == "eval" else None,
                status=rng.choice(statuses), run_id=None, message=None)
            values["attempt"] = 1
            runs.append(values)
            inputs += edges
            events.append(event)
            if kind == "quantize":
                out = _digest(f"qmodel-{i}")
                qmodels.append(out)
                arts.append(artifact(out, "quantized-model", values["id"], {"bits": 2 + i % 3, "method": "gptq"}))
                outs.append({"run_id": values["id"], "role": "model", "digest": out})
            else:
                eval_ids.append(values["id"])
                if i < reports:
                    out = _digest(f"report-{i}")
                    arts.append(artifact(out, "report", values["id"], {"bits": 2 + i % 7, "tasks": 1}))
                    outs.append({"run_id": values["id"], "role": "report", "digest": out})
            batches.append((values["id"], _metric_batch(rng, kind, per_run)[0]))

        def body(conn: Any) -> None:
            nonlocal metric_rows
            conn.execute(insert(runs_t), runs)
            conn.execute(insert(run_inputs_t), inputs)
            conn.execute(insert(run_events_t), events)
            if arts:
                conn.execute(insert(artifacts_t), arts)
                conn.execute(insert(run_outputs_t), outs)
            for run_id, batch in batches:
                metric_rows += insert_metrics(conn, run_id, 1, batch)

        write(db, body)

    for kind, total in (("quantize", quantize), ("eval", evals)):
        for start in range(0, total, CHUNK):
            chunk(start, min(CHUNK, total - start), kind)
    del now
    return {"base": base, "eval_ids": eval_ids, "per_run": per_run, "metric_rows": metric_rows,
            "quantize_runs": quantize, "eval_runs": evals, "artifacts": 1 + quantize + reports,
            "sweeps": len(sweep_ids)}


def fill_mlflow(path: Path, db_path: Path) -> tuple[Any, str]:
    """MLflow's store on `path` with bitsmith's runs and metric rows copied in by bulk SQL; (client, experiment)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{path}")
    experiment = client.create_experiment("bench", artifact_location=f"file://{path.parent}/mlruns")
    src = sqlite3.connect(db_path)
    dst = sqlite3.connect(path)
    status = {"succeeded": "FINISHED", "failed": "FAILED", "running": "RUNNING", "queued": "SCHEDULED",
              "cancelled": "KILLED"}
    ms = int(time.time() * 1000)
    runs = [(r, name, "LOCAL", "bench", "", "bench", status[s], ms, ms, "", "active",
             f"file:///mlruns/{r}", int(experiment)) for r, name, s in
            src.execute("SELECT id, name, status FROM runs")]
    dst.executemany("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
                    "start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
    dst.executemany("INSERT INTO tags (key, value, run_uuid) VALUES ('mlflow.runName', ?, ?)",
                    [(r[1], r[0]) for r in runs])
    cursor = src.execute("SELECT key, coalesce(value, 'NaN'), step, run_id FROM metrics ORDER BY id")
    latest: dict[tuple[str, str], tuple[float, int]] = {}
    while rows := cursor.fetchmany(100_000):
        dst.executemany("INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                        "VALUES (?,?,?,?,?,0)", [(k, float(v), ms, r, s or 0) for k, v, s, r in rows])
        for k, v, s, r in rows:
            if (r, k) not in latest or (s or 0) >= latest[(r, k)][1]:
                latest[(r, k)] = (float(v), s or 0)
    dst.executemany("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,0,?)",
                    [(k, v, ms, s, r) for (r, k), (v, s) in latest.items()])
    dst.commit()
    dst.close()
    src.close()
    return client, experiment


def timed(fn: Callable[[int], Any], repeats: int) -> tuple[dict[str, float], Any]:
    fn(0)  # warm up
    samples, result = [], None
    for i in range(repeats):
        start = time.perf_counter()
        result = fn(i)
        samples.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(statistics.median(samples), 3), "p95_ms": round(_pct(samples, 0.95), 3),
            "repeats": repeats}, result


def measure_bitsmith(db: Any, filled: dict[str, Any], repeats: int, rng: random.Random) -> dict[str, Any]:
    from bitsmith.platform import store
    from bitsmith.platform.store import queries

    def runs_page(_: int) -> Any:
        page = queries.list_runs(db, status="succeeded", metric_filters=[(PPL, "<", 50.0)], sort=f"metric:{PPL}",
                                 descending=False, limit=50)
        store.final_metrics(db, [r.id for r in page.rows])
        return page

    cursor = [None]

    def runs_page_next(_: int) -> Any:
        page = queries.list_runs(db, status="succeeded", metric_filters=[(PPL, "<", 50.0)], sort=f"metric:{PPL}",
                                 descending=False, limit=50, cursor=cursor[0])
        store.final_metrics(db, [r.id for r in page.rows])
        cursor[0] = page.next_cursor
        return page

    def runs_newest(_: int) -> Any:
        page = queries.list_runs(db, limit=50)
        store.final_metrics(db, [r.id for r in page.rows])
        return page

    def run_page(_: int) -> Any:
        run = store.get_run(db, rng.choice(filled["eval_ids"]))
        return (run, store.run_inputs(db, run.id), store.run_outputs(db, run.id), store.final_metrics(db, [run.id]),
                store.run_events(db, run.id), store.get_metrics(db, run.id))

    def lineage_hub(_: int) -> Any:
        return queries.lineage_page(db, digest=filled["base"], direction="down")

    def lineage_up(_: int) -> Any:
        return queries.lineage_page(db, run_id=rng.choice(filled["eval_ids"]), direction="up")

    def artifact_query(_: int) -> Any:
        return queries.find_artifacts(db, kind="report", where=["meta.bits<=3"], limit=50)

    sweep_cursor = [None]

    def sweeps_page(_: int) -> Any:  # the UI's sweeps list: newest 50 sweeps with their child counts
        return queries.list_sweeps(db, limit=50)

    def sweeps_page_next(_: int) -> Any:
        page = queries.list_sweeps(db, limit=50, cursor=sweep_cursor[0])
        sweep_cursor[0] = page.next_cursor
        return page

    out: dict[str, Any] = {}
    for name, fn in (("runs_page", runs_page), ("runs_page_next", runs_page_next), ("runs_newest", runs_newest),
                     ("run_page", run_page), ("lineage_hub", lineage_hub), ("lineage_up", lineage_up),
                     ("artifact_query", artifact_query), ("sweeps_page", sweeps_page),
                     ("sweeps_page_next", sweeps_page_next)):
        stats, result = timed(fn, repeats)
        if name.startswith(("runs", "sweeps")) or name == "artifact_query":
            stats["rows"] = len(result.rows)
        if name.startswith("lineage"):
            stats["nodes"] = len(result.graph.runs) + len(result.graph.artifacts)
            stats["collapsed_children"] = sum(result.collapsed.values())
        out[name] = stats
    return out


def measure_mlflow(client: Any, experiment: str, repeats: int) -> tuple[dict[str, float], list[str]]:
    def search(_: int) -> Any:
        return client.search_runs([experiment], filter_string=f"metrics.`{PPL}` < 50 and attributes.status = "
                                  "'FINISHED'", order_by=[f"metrics.`{PPL}` ASC"], max_results=50)

    stats, result = timed(search, repeats)
    stats["rows"] = len(result)
    return stats, [r.info.run_id for r in result]


def measure_cli(db_url: str, filled: dict[str, Any], src: Path | None) -> dict[str, Any]:
    """Wall time (median of 3) and stdout size of the issue's CLI commands; `src` runs an older checkout."""
    env = {**os.environ, "BITSMITH_DB_URL": db_url, "COLUMNS": "200", "RAY_USAGE_STATS_ENABLED": "0"}
    if src is not None:  # bitsmith.* from an older tree: a shim package of links, ahead of the editable install
        shim = Path(tempfile.mkdtemp(prefix="bitsmith-old-")) / "bitsmith"
        shim.mkdir()
        for part in ("platform", "workers", "kernels", "migrations"):
            (shim / part).symlink_to(src / part)
        env["PYTHONPATH"] = str(shim.parent)
    run_id = filled["eval_ids"][len(filled["eval_ids"]) // 2]
    commands = {"runs list": ["runs", "list"], "lineage run:ID": ["lineage", f"run:{run_id}"],
                "lineage MODEL --down --json": ["lineage", filled["base"][:16], "--down", "--json"],
                "artifacts find --kind report": ["artifacts", "find", "--kind", "report"],
                "artifacts show": ["artifacts", "show", filled["base"][:16]]}
    out = {}
    for name, argv in commands.items():
        walls, size, code = [], 0, 0
        for _ in range(3):
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "bitsmith.platform.cli.main", *argv], env=env,
                                  capture_output=True, timeout=1800)
            walls.append(time.perf_counter() - start)
            size, code = len(proc.stdout), proc.returncode
            if walls[-1] > 20:
                break  # an unbounded command of the old code: one sample is enough
        out[name] = {"wall_s": round(statistics.median(walls), 3), "stdout_bytes": size, "exit": code,
                     "samples": len(walls)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--metric-rows", type=int, default=2_000_000)
    parser.add_argument("--artifacts", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--mlflow-repeats", type=int, default=10)
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--cli", action="store_true", help="also time the CLI commands of issue 16")
    parser.add_argument("--old-src", type=Path, default=None, help="an older checkout to time the CLI 'before'")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the filled stores here (default: temp)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rng = random.Random(0)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ui-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    db_path = work / f"bitsmith-{uuid.uuid4().hex[:8]}.db"
    db_url = f"sqlite:///{db_path}"

    from bitsmith.platform.store import open_database

    db = open_database(db_url)
    start = time.perf_counter()
    filled = fill_bitsmith(db, args, rng)
    fill_s = time.perf_counter() - start
    print(f"filled {args.runs:,} runs, {filled['metric_rows']:,} metric rows, {filled['artifacts']:,} artifacts "
          f"in {fill_s:.0f} s", file=sys.stderr)
    results: dict[str, Any] = {"bitsmith": measure_bitsmith(db, filled, args.repeats, rng)}
    mlflow: dict[str, Any] | None = None
    if not args.no_mlflow:
        try:
            start = time.perf_counter()
            client, experiment = fill_mlflow(work / f"mlflow-{uuid.uuid4().hex[:8]}.db", db_path)
            mlflow_fill_s = time.perf_counter() - start
            stats, mlflow_ids = measure_mlflow(client, experiment, args.mlflow_repeats)
            ours = [r.id for r in __import__("bitsmith.platform.store.queries", fromlist=["list_runs"]).list_runs(
                db, status="succeeded", metric_filters=[(PPL, "<", 50.0)], sort=f"metric:{PPL}", descending=False,
                limit=50).rows]
            mlflow = {"search_runs": stats, "fill_s": round(mlflow_fill_s, 1), "same_first_page": ours == mlflow_ids}
        except ImportError as exc:
            mlflow = {"skipped": f"mlflow not importable ({exc}); pip install mlflow-skinny"}
    cli = measure_cli(db_url, filled, None) if args.cli else None
    cli_before = measure_cli(db_url, filled, args.old_src.resolve()) if args.cli and args.old_src else None
    page = results["bitsmith"]["runs_page"]
    report = {
        "benchmark": "ui_bench", "python": sys.version.split()[0], "machine": platform.machine(),
        "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
        "size": {"runs": args.runs, "metric_rows": filled["metric_rows"], "artifacts": filled["artifacts"],
                 "metric_rows_per_run": filled["per_run"], "quantize_runs": filled["quantize_runs"],
                 "eval_runs": filled["eval_runs"], "sweeps": filled["sweeps"]},
        "fill_s": round(fill_s, 1), "queries": results["bitsmith"], "mlflow": mlflow, "cli": cli,
        "cli_before": cli_before,
    }
    if mlflow and "search_runs" in mlflow:
        report["runs_page_speedup_vs_mlflow"] = {
            "p50": round(mlflow["search_runs"]["p50_ms"] / page["p50_ms"], 1),
            "p95": round(mlflow["search_runs"]["p95_ms"] / page["p95_ms"], 1)}
    report["target_p95_under_100ms"] = all(v["p95_ms"] < 100 for v in results["bitsmith"].values())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'query':<18}{'p50 ms':>10}{'p95 ms':>10}  notes")
    for name, stats in results["bitsmith"].items():
        notes = ", ".join(f"{k}={v}" for k, v in stats.items() if k not in ("p50_ms", "p95_ms", "repeats"))
        print(f"{name:<18}{stats['p50_ms']:>10.2f}{stats['p95_ms']:>10.2f}  {notes}")
    if mlflow and "search_runs" in mlflow:
        s = mlflow["search_runs"]
        print(f"{'mlflow_search':<18}{s['p50_ms']:>10.2f}{s['p95_ms']:>10.2f}  rows={s['rows']}, "
              f"same first page: {mlflow['same_first_page']}")
        print(f"runs page vs MLflow search_runs: {report['runs_page_speedup_vs_mlflow']['p50']}x faster (p50), "
              f"{report['runs_page_speedup_vs_mlflow']['p95']}x (p95)")
    elif mlflow:
        print(mlflow["skipped"])
    for label, table in (("CLI after", cli), ("CLI before", cli_before)):
        if table:
            print(f"\n{label:<32}{'wall s':>8}{'stdout':>14}")
            for name, row in table.items():
                print(f"{name:<32}{row['wall_s']:>8.2f}{row['stdout_bytes']:>14,}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
