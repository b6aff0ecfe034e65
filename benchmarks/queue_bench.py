"""Benchmark: N queued no-op jobs drained through the store's dispatcher, beside the same jobs as plain Ray tasks.

In one run, on one fresh SQLite store and the same number of CPUs:
  * queueing: N `noop` runs recorded as queued with `queue_submissions` (the batch form of what `bitsmith submit`
    without --wait writes), jobs/s;
  * reference: N other queued runs executed as plain Ray tasks (`execute_run`, the same task body the dispatcher
    uses), all submitted at once from this process; jobs/s;
  * dispatcher: `python -m bitsmith.platform.scheduler.dispatcher` started on the N queued runs, drained to the
    end (timed from its first heartbeat, as the reference is timed after `ray.init`); jobs/s.
In both, the RSS of the Ray head (gcs_server, raylet and Ray's Python head services: autoscaler monitor, minimal
dashboard, log monitor, dashboard and runtime-env agents), of the Ray workers and of the driver (this process, or
the dispatcher) is sampled every 0.5 s from the first job to the last one ended: start, peak, end and the
least-squares slope (MiB/min). Through the dispatcher the queue lives in the store and Ray holds only the runs in
flight; submitted at once, Ray holds all N.
Prints a table and writes `benchmarks/results/queue_bench.json`.

    python benchmarks/queue_bench.py [--jobs 10000] [--cpus 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("BITSMITH_NO_PROGRESS", "1")
RESULTS = Path(__file__).resolve().parent / "results" / "queue_bench.json"
# The Ray head: its GCS and raylet, and Ray's own Python services on the node (the autoscaler monitor, the
# minimal dashboard, the log monitor, the dashboard and runtime-env agents). Workers (`ray::IDLE`, `ray::TASK`)
# and the driver (this process, or the dispatcher) are counted apart.
HEAD_NAMES = ("gcs_server", "raylet")
HEAD_SCRIPTS = ("autoscaler/_private/monitor.py", "dashboard/dashboard.py", "_private/log_monitor.py")
HEAD_TITLES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def head_part(name: str, cmdline: list[str]) -> str | None:
    """'gcs_server', 'raylet', 'services' (Ray's Python head services) or None (a worker or anything else)."""
    if name in HEAD_NAMES:
        return name
    line = " ".join(cmdline)
    if line.startswith(HEAD_TITLES) or any(script in line for script in HEAD_SCRIPTS):
        return "services"
    return None


class RssSampler:
    """RSS over time of a process tree (`root` pid and its descendants): the Ray head (GCS, raylet, Ray's head
    services), its workers, and the root process itself, sampled every `every_s` seconds."""

    def __init__(self, root: int, every_s: float = 0.5):
        self.root, self.every_s = root, every_s
        self.samples: list[dict[str, float]] = []  # t (perf_counter), gcs_server, raylet, services, head, ...
        self.parts: dict[int, str | None] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def sample(self) -> dict[str, float] | None:
        import psutil

        try:
            root = psutil.Process(self.root)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return None
        out = {"t": time.perf_counter(), "gcs_server": 0, "raylet": 0, "services": 0, "workers": 0, "root": 0}
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                if proc.pid == self.root:
                    out["root"] = rss
                    continue
                if proc.pid not in self.parts:
                    self.parts[proc.pid] = head_part(proc.name(), proc.cmdline())
                part = self.parts[proc.pid]
                out[part or "workers"] += rss
            except psutil.NoSuchProcess:
                pass
        out["head"] = out["gcs_server"] + out["raylet"] + out["services"]
        return out if out["gcs_server"] else None

    def run(self) -> None:
        while not self.stop.is_set():
            sample = self.sample()
            if sample is not None:
                self.samples.append(sample)
            self.stop.wait(self.every_s)

    def window(self, t0: float, t1: float) -> list[dict[str, float]]:
        return [s for s in self.samples if t0 <= s["t"] <= t1]

    def summary(self, t0: float, t1: float) -> dict:
        """Start, peak, end (MiB) and least-squares slope (MiB per minute) of each part over [t0, t1]."""
        samples = self.window(t0, t1)
        out: dict = {"samples": len(samples), "seconds": t1 - t0}
        for key in ("head", "gcs_server", "raylet", "services", "workers", "root"):
            values = [s[key] / 2**20 for s in samples]
            if not values:
                continue
            out[key] = {"start_mib": values[0], "peak_mib": max(values), "end_mib": values[-1],
                        "slope_mib_per_min": slope([s["t"] for s in samples], values) * 60}
        return out

    def series(self, t0: float, key: str = "head", points: int = 11) -> list[tuple[float, float]]:
        """(seconds since t0, MiB) at about `points` evenly spaced samples, for the report."""
        samples = [s for s in self.samples if s["t"] >= t0]
        if not samples:
            return []
        step = max(1, (len(samples) - 1) // (points - 1))
        picked = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
        return [(round(s["t"] - t0, 1), round(s[key] / 2**20, 1)) for s in picked]

    def __enter__(self) -> "RssSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def queue_jobs(db, n: int, tag: str) -> tuple[list[str], float]:
    from bitsmith.platform.provenance import code_version
    from bitsmith.platform.scheduler.submit import queue_submissions
    from bitsmith.platform.specs import parse_spec

    code = code_version()
    started = time.perf_counter()
    specs = [parse_spec({"kind": "noop", "payload": f"{tag}{i}"}, source=f"job {i}") for i in range(n)]
    subs = queue_submissions(db, specs, code=code)
    return [s.run.id for s in subs], time.perf_counter() - started


def ended(db, run_ids: list[str]) -> dict[str, int]:
    from sqlalchemy import func, select

    from bitsmith.platform.store.schema import runs_t

    counts: dict[str, int] = {}
    with db.transaction() as conn:
        for i in range(0, len(run_ids), 500):
            for status, n in conn.execute(select(runs_t.c.status, func.count()).where(
                    runs_t.c.id.in_(run_ids[i:i + 500])).group_by(runs_t.c.status)):
                counts[status] = counts.get(status, 0) + n
    return counts


def plain_ray(settings, run_ids: list[str], cpus: int) -> dict:
    import ray

    from bitsmith.platform.scheduler.execute import execute_run

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        with RssSampler(os.getpid()) as rss:
            time.sleep(1.0)  # a sample or two of the idle head before the jobs arrive
            remote = ray.remote(execute_run).options(num_cpus=1, max_retries=0)
            started = time.perf_counter()
            refs = [remote.remote(run_id, settings) for run_id in run_ids]
            submitted = time.perf_counter() - started
            statuses = ray.get(refs)
            took = time.perf_counter() - started
            time.sleep(1.0)
    finally:
        ray.shutdown()
    return {"seconds": took, "submit_seconds": submitted, "jobs_per_s": len(run_ids) / took,
            "succeeded": statuses.count("succeeded"), "memory": rss.summary(started, started + took),
            "head_series": rss.series(started)}


def dispatcher(settings, db, run_ids: list[str], cpus: int) -> dict:
    from bitsmith.platform.store import queue

    env = {**os.environ, **settings.env()}
    log = open(settings.home / "dispatcher.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "bitsmith.platform.scheduler.dispatcher", "--num-cpus", str(cpus)],
                            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        with RssSampler(proc.pid) as rss:
            while not (record := queue.get_dispatcher(db)) or not record.state:  # serving: time the drain from here
                time.sleep(0.05)
                if proc.poll() is not None:
                    raise SystemExit(f"the dispatcher exited {proc.returncode}; see {settings.home}/dispatcher.log")
            started = time.perf_counter()
            while True:
                counts = ended(db, run_ids)
                if sum(v for k, v in counts.items() if k in ("succeeded", "failed", "cancelled")) == len(run_ids):
                    break
                time.sleep(0.25)
            took = time.perf_counter() - started
            time.sleep(1.0)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"seconds": took, "jobs_per_s": len(run_ids) / took, "succeeded": counts.get("succeeded", 0),
            "memory": rss.summary(started, started + took), "head_series": rss.series(started)}


def memory_row(label: str, mem: dict, key: str) -> str:
    m = mem.get(key)
    if not m:
        return f"{label:<34} {'-':>8}"
    return (f"{label:<34} {m['start_mib']:>8.0f} {m['peak_mib']:>8.0f} {m['end_mib']:>8.0f} "
            f"{m['end_mib'] - m['start_mib']:>+8.0f} {m['slope_mib_per_min']:>+10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of each embedded Ray instance")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="queue-bench-") as tmp:
        os.environ["BITSMITH_HOME"] = tmp
        os.environ.pop("BITSMITH_DB_URL", None)
        os.environ.pop("BITSMITH_ARTIFACT_ROOT", None)
        from bitsmith.platform import store
        from bitsmith.platform.config import Settings

        settings = Settings.from_env()
        db = store.open_database(settings.db_url)
        reference_ids, _ = queue_jobs(db, args.jobs, "plain-")
        ref = plain_ray(settings, reference_ids, args.cpus)
        queued_ids, queue_s = queue_jobs(db, args.jobs, "queued-")
        disp = dispatcher(settings, db, queued_ids, args.cpus)
        store.dispose_engines(settings.db_url)
        report(args, queue_s, ref, disp)  # before the store's temporary folder (2N run folders) is removed


def report(args: argparse.Namespace, queue_s: float, ref: dict, disp: dict) -> None:
    result = {"jobs": args.jobs, "cpus": args.cpus, "host": platform.node(), "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg(), "queueing": {"seconds": queue_s, "jobs_per_s": args.jobs / queue_s},
              "plain_ray": ref, "dispatcher": disp,
              "drain_ratio_vs_plain_ray": disp["jobs_per_s"] / ref["jobs_per_s"]}
    print(f"{args.jobs} no-op jobs, {args.cpus} CPUs")
    print(f"{'':<24} {'time':>10} {'jobs/s':>10}")
    print(f"{'queue N runs (store)':<24} {queue_s:>8.2f} s {args.jobs / queue_s:>10,.0f}")
    print(f"{'plain Ray tasks':<24} {ref['seconds']:>8.1f} s {ref['jobs_per_s']:>10.1f}")
    print(f"{'through the dispatcher':<24} {disp['seconds']:>8.1f} s {disp['jobs_per_s']:>10.1f}")
    print(f"drain throughput through the dispatcher / plain Ray: {result['drain_ratio_vs_plain_ray']:.2f}")
    print(f"\nRSS (MiB) from the first job to the last one ended "
          f"(plain Ray: {ref['memory']['samples']} samples; dispatcher: {disp['memory']['samples']})")
    print(f"{'':<34} {'start':>8} {'peak':>8} {'end':>8} {'growth':>8} {'MiB/min':>10}")
    for who, res in (("plain Ray", ref), ("dispatcher", disp)):
        for key, label in (("head", "Ray head (all)"), ("gcs_server", "  gcs_server"), ("raylet", "  raylet"),
                           ("services", "  Ray head services"), ("workers", "Ray workers"),
                           ("root", "driver" if who == "plain Ray" else "dispatcher process")):
            print(memory_row(f"{who}: {label}", res["memory"], key))
    for who, res in (("plain Ray", ref), ("dispatcher", disp)):
        print(f"{who} Ray head over time (s, MiB): " + ", ".join(f"{t:g}:{m:.0f}" for t, m in res["head_series"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
