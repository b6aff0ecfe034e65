"""Sweep throughput: an N-child bitsmith sweep of short jobs beside Ray Tune running the same trials.

Both sides run in one process on the same embedded local Ray instance (started once; its start-up is
excluded from both), each after its own small warm-up run, with the same concurrency.

- bitsmith: a real `kind: sweep` (noop base, grid over `seed` with N values, each child logging
  `--metrics` points), created and run as `bitsmith sweep run` does it: `child_specs` (validation),
  `store.create_sweep`, `sweeps.run_sweep(executor="ray")`, then `sweep_results` (ranking). SQLite
  store and artifacts in a temp dir. Timed from the sweep spec to the ranked results; every child must
  have succeeded.
- Ray Tune: a function trainable doing the same work (sleep, report the same metrics, write the same
  small result file), `tune.grid_search` over the same seeds, the same `max_concurrent_trials`, default
  Tune settings otherwise, except `verbose=0` (no progress table) and `storage_path` in the temp dir.
  Tune's own tracking is what it does by default: a trial actor per trial, results/params/progress
  files per trial in its storage path, experiment state snapshots. Timed from `Tuner(...)` to the
  ranked result dataframe; every trial must have finished without error.

Needs Ray Tune (the `bench` extra: `pip install 'ray[tune]==<your ray version>'`).

    python benchmarks/sweep_bench.py --children 200 --work-s 0
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["BITSMITH_NO_PROGRESS"] = "1"
TARGET_RATIO = 5.0


def bitsmith_sweep(n: int, work_s: float, metrics: int, concurrency: int, home: Path) -> float:
    from bitsmith.platform import store
    from bitsmith.platform.config import Settings
    from bitsmith.platform.sweeps import child_specs, load_sweep_spec, run_sweep, sweep_results

    settings = Settings(db_url=f"sqlite:///{home / 'bench.db'}", artifact_root=str(home / "artifacts"), home=home)
    db = store.open_database(settings.db_url)  # creating and migrating the empty store is not timed
    data = {"kind": "sweep", "name": "sweep-bench", "strategy": "grid",
            "base": {"kind": "noop", "sleep_s": work_s, "metrics": metrics, "resources": {"cpus": 1}},
            "parameters": {"seed": list(range(n))}, "max_concurrency": concurrency,
            "objectives": [{"metric": "noop/value", "goal": "max"}]}
    t0 = time.perf_counter()
    spec = load_sweep_spec(data, source="sweep_bench")
    children = child_specs(spec)  # `bitsmith sweep run` validates every child before writing
    record = store.create_sweep(db, name=spec.name, spec=spec.model_dump(mode="json"))
    run_sweep(record.id, settings, executor="ray")
    _, rows = sweep_results(db, record.id)
    elapsed = time.perf_counter() - t0
    bad = [r for r in rows if r.status != "succeeded" or "noop/value" not in r.metrics]
    if len(children) != n or len(rows) != n or bad:
        raise SystemExit(f"bitsmith sweep: {len(rows)} of {n} children recorded, {len(bad)} not succeeded "
                         f"with metrics: {bad[:3]}")
    return elapsed


def tune_trainable(config: dict[str, Any]) -> None:
    """The noop worker's work, as a Tune function trainable."""
    from ray import tune

    if config["work_s"]:
        time.sleep(config["work_s"])
    for step in range(config["metrics"]):
        report = {"noop/value": float(step), "step": step}
        if step == config["metrics"] - 1:
            report["noop/metrics_logged"] = float(config["metrics"])
        tune.report(report)
    Path("result.json").write_text(json.dumps({"payload": "", "seed": config["seed"], "input": None}))


def ray_tune(n: int, work_s: float, metrics: int, concurrency: int, storage: Path) -> float:
    from ray import tune

    t0 = time.perf_counter()
    tuner = tune.Tuner(
        tune_trainable,
        param_space={"seed": tune.grid_search(list(range(n))), "work_s": work_s, "metrics": metrics},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(name="sweep-bench", storage_path=str(storage), verbose=0))
    grid = tuner.fit()
    ranked = grid.get_dataframe(filter_metric="noop/value", filter_mode="max").sort_values(
        "noop/value", ascending=False)
    elapsed = time.perf_counter() - t0
    if len(grid) != n or grid.num_errors or len(ranked) != n:
        raise SystemExit(f"Ray Tune: {len(grid)} of {n} trials, {grid.num_errors} errors, {len(ranked)} ranked")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=200, help="children (bitsmith) = trials (Tune)")
    parser.add_argument("--concurrency", type=int, default=None, help="children/trials at once (default: Ray CPUs)")
    parser.add_argument("--work-s", type=float, default=0.0, help="seconds of work (sleep) per child")
    parser.add_argument("--metrics", type=int, default=3, help="metric points each child logs")
    parser.add_argument("--warmup", type=int, default=4, help="children/trials of each side's warm-up run")
    parser.add_argument("--out", default="benchmarks/results/sweep_bench.json")
    args = parser.parse_args()
    import ray

    from bitsmith.platform.provenance import code_version

    code = code_version()  # at the start: the tree may be edited while the benchmark runs
    load = {"before": os.getloadavg()[0]}  # 1-minute load average (includes this benchmark's own processes)
    t_init = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t_init
    cpus = int(ray.cluster_resources().get("CPU", 1))
    concurrency = args.concurrency or cpus
    with tempfile.TemporaryDirectory() as tmp:
        try:
            # each side's warm-up right before its measurement (Tune's trial actors displace idle workers)
            bitsmith_sweep(args.warmup, 0.0, args.metrics, concurrency, Path(tmp) / "bs-warm")
            load["bitsmith_start"] = os.getloadavg()[0]
            t_bs = bitsmith_sweep(args.children, args.work_s, args.metrics, concurrency, Path(tmp) / "bs")
            load["bitsmith_end"] = os.getloadavg()[0]
            ray_tune(args.warmup, 0.0, args.metrics, concurrency, Path(tmp) / "tune-warm")
            load["tune_start"] = os.getloadavg()[0]
            t_tune = ray_tune(args.children, args.work_s, args.metrics, concurrency, Path(tmp) / "tune")
            load["tune_end"] = os.getloadavg()[0]
        finally:
            ray.shutdown()
    bs_rate, tune_rate = args.children / t_bs, args.children / t_tune
    result = {
        "children": args.children, "concurrency": concurrency, "work_s": args.work_s, "metrics": args.metrics,
        "cpus": cpus, "os_cpu_count": os.cpu_count(),
        "bitsmith_s": t_bs, "tune_s": t_tune,
        "bitsmith_children_per_s": bs_rate, "tune_trials_per_s": tune_rate, "ratio": bs_rate / tune_rate,
        "target_ratio": TARGET_RATIO, "meets_target": bs_rate / tune_rate >= TARGET_RATIO,
        "bitsmith_ms_per_child": t_bs / args.children * 1e3, "tune_ms_per_trial": t_tune / args.children * 1e3,
        "ray_init_s_excluded": ray_init_s, "same_ray_instance": True,
        "loadavg_1min": load,
        "versions": {"ray": ray.__version__, "bitsmith": _version("bitsmith"), "python": sys.version.split()[0],
                     "bitsmith_code": code},
        "args": vars(args),
        "notes": "Tune: default settings except verbose=0 and storage_path in a temp dir; it checkpoints "
                 "experiment state and writes result/params/progress files per trial there (its tracking).",
    }
    _print_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}", file=sys.stderr)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _print_table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{r['children']} children, {r['concurrency']} at once, work {r['work_s']} s, "
                    f"{r['metrics']} metrics each, {r['cpus']} CPUs (same Ray instance)")
    for col in ("side", "seconds", "children/s", "ms/child"):
        t.add_column(col, justify="right" if col != "side" else "left")
    t.add_row(f"bitsmith {r['versions']['bitsmith']} sweep (SQLite)", f"{r['bitsmith_s']:.2f}",
              f"{r['bitsmith_children_per_s']:.1f}", f"{r['bitsmith_ms_per_child']:.1f}")
    t.add_row(f"Ray Tune {r['versions']['ray']}", f"{r['tune_s']:.2f}", f"{r['tune_trials_per_s']:.1f}",
              f"{r['tune_ms_per_trial']:.1f}")
    console = Console()
    console.print(t)
    verdict = "meets" if r["meets_target"] else "BELOW"
    load = r["loadavg_1min"]
    console.print(f"bitsmith / Tune: {r['ratio']:.2f}x ({verdict} the {TARGET_RATIO:.0f}x target); 1-min load "
                  f"average {load['bitsmith_start']:.2f}->{load['bitsmith_end']:.2f} around bitsmith, "
                  f"{load['tune_start']:.2f}->{load['tune_end']:.2f} around Tune on {r['os_cpu_count']} cores "
                  "(this benchmark's own processes included)")


if __name__ == "__main__":
    main()
