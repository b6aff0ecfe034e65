"""Scheduling overhead: N short jobs through bitsmith (tracked) beside the same work as plain Ray tasks.

Both sides run on the same embedded local Ray instance in the same process run. bitsmith's side
includes everything a user gets: spec validation, cache key, run row, status events, the worker's
output artifact (content-addressed), final metrics. Prints a table and writes JSON.

    python benchmarks/schedule_bench.py --jobs 500 --work-s 0.0 --work-s 0.2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["BITSMITH_NO_PROGRESS"] = "1"


def plain_ray(n: int, work_s: float) -> float:
    import ray

    @ray.remote(num_cpus=1)
    def job(i: int, work_s: float) -> int:
        if work_s:
            time.sleep(work_s)
        return i

    t0 = time.perf_counter()
    ray.get([job.remote(i, work_s) for i in range(n)])
    return time.perf_counter() - t0


def bitsmith_jobs(n: int, work_s: float, home: Path) -> float:
    from bitsmith.platform import store
    from bitsmith.platform.config import Settings
    from bitsmith.platform.provenance import code_version
    from bitsmith.platform.scheduler.ray_executor import run_on_ray
    from bitsmith.platform.scheduler.submit import record_submission
    from bitsmith.platform.specs import parse_spec

    settings = Settings(db_url=f"sqlite:///{home / 'bench.db'}", artifact_root=str(home / "artifacts"), home=home)
    db = store.open_database(settings.db_url)
    code = code_version()
    t0 = time.perf_counter()
    run_ids = []
    for i in range(n):
        spec = parse_spec({"kind": "noop", "seed": i, "sleep_s": work_s, "payload": f"job {i} {work_s} {t0}"})
        run_ids.append(record_submission(db, spec, code=code, executor="ray").run.id)
    finals = run_on_ray(run_ids, settings)
    elapsed = time.perf_counter() - t0
    bad = [s for s in finals.values() if s != "succeeded"]
    if bad:
        raise SystemExit(f"{len(bad)} bitsmith jobs did not succeed: {bad[:3]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--work-s", type=float, action="append", help="seconds of work per job (repeatable)")
    parser.add_argument("--out", default="benchmarks/results/schedule_bench.json")
    args = parser.parse_args()
    works = args.work_s or [0.0, 0.2]
    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plain_ray(50, 0.0)  # warm the worker pool for both sides
        bitsmith_jobs(10, 0.0, Path(tmp) / "warm")
        for work in works:
            t_ray = plain_ray(args.jobs, work)
            t_bs = bitsmith_jobs(args.jobs, work, Path(tmp) / f"w{work}")
            rows.append({"jobs": args.jobs, "work_s": work, "cpus": cpus,
                         "plain_ray_jobs_per_s": args.jobs / t_ray, "bitsmith_jobs_per_s": args.jobs / t_bs,
                         "overhead_ratio": t_bs / t_ray,
                         "bitsmith_overhead_ms_per_job": (t_bs - t_ray) / args.jobs * 1e3 * cpus})
    ray.shutdown()
    print(f"{'jobs':>5} {'work s':>7} {'plain Ray jobs/s':>17} {'bitsmith jobs/s':>16} {'time ratio':>11} "
          f"{'tracking ms/job·cpu':>20}")
    for r in rows:
        print(f"{r['jobs']:>5} {r['work_s']:>7.2f} {r['plain_ray_jobs_per_s']:>17.1f} "
              f"{r['bitsmith_jobs_per_s']:>16.1f} "
              f"{r['overhead_ratio']:>10.2f}x {r['bitsmith_overhead_ms_per_job']:>20.1f}")
    print("target: bitsmith time under 2x plain Ray for the same jobs", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "python": sys.version.split()[0]}, indent=2))


if __name__ == "__main__":
    main()
