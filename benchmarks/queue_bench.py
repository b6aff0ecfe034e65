"""Benchmark: N queued no-op jobs drained through the store's dispatcher, beside the same jobs as plain Ray tasks.

In one run, on one fresh SQLite store and the same number of CPUs:
  * queueing: N `noop` runs recorded as queued with `queue_submissions` (the batch form of what `bitsmith submit`
    without --wait writes), jobs/s;
  * reference: N other queued runs executed as plain Ray tasks (`execute_run`, the same task body the dispatcher
    uses), all submitted at once from this process; jobs/s and the Ray head's (gcs_server + raylet) peak RSS;
  * dispatcher: `python -m bitsmith.platform.scheduler.dispatcher` started on the N queued runs, drained to the
    end (timed from its first heartbeat, as the reference is timed after `ray.init`); jobs/s, the dispatcher's
    peak RSS and its Ray head's RSS at 10/50/90 % of the drain and at peak (the queue lives in the store; Ray
    only holds the runs in flight).
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
HEAD = ("gcs_server", "raylet")


class RssSampler:
    """Peak RSS of a process tree (`root` pid and its descendants), split into Ray head processes and the rest."""

    def __init__(self, root: int, every_s: float = 0.25):
        self.root, self.every_s = root, every_s
        self.peak_head = self.peak_root = 0
        self.first_head: int | None = None
        self.heads: list[tuple[float, int]] = []   # (monotonic time, Ray head RSS)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def sample(self) -> tuple[int, int]:
        import psutil

        try:
            root = psutil.Process(self.root)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0, 0
        head = own = 0
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                if proc.name() in HEAD:
                    head += rss
                elif proc.pid == self.root:
                    own = rss
            except psutil.NoSuchProcess:
                pass
        return head, own

    def run(self) -> None:
        while not self.stop.is_set():
            head, own = self.sample()
            if head and self.first_head is None:
                self.first_head = head
            if head:
                self.heads.append((time.perf_counter(), head))
            self.peak_head, self.peak_root = max(self.peak_head, head), max(self.peak_root, own)
            self.stop.wait(self.every_s)

    def head_at(self, t: float) -> int:
        """The Ray head's RSS at the sample nearest to time `t` (perf_counter)."""
        return min(self.heads, key=lambda s: abs(s[0] - t))[1] if self.heads else 0

    def __enter__(self) -> "RssSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


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
            remote = ray.remote(execute_run).options(num_cpus=1, max_retries=0)
            started = time.perf_counter()
            refs = [remote.remote(run_id, settings) for run_id in run_ids]
            submitted = time.perf_counter() - started
            statuses = ray.get(refs)
            took = time.perf_counter() - started
            at = {f"head_rss_at_{p}pct_mib": rss.head_at(started + took * p / 100) / 2**20 for p in (10, 50, 90)}
    finally:
        ray.shutdown()
    return {"seconds": took, "submit_seconds": submitted, "jobs_per_s": len(run_ids) / took,
            "succeeded": statuses.count("succeeded"), **at, "head_peak_rss_mib": rss.peak_head / 2**20}


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
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    at = {f"head_rss_at_{p}pct_of_drain_mib": rss.head_at(started + took * p / 100) / 2**20 for p in (10, 50, 90)}
    return {"seconds": took, "jobs_per_s": len(run_ids) / took, "succeeded": counts.get("succeeded", 0),
            "dispatcher_peak_rss_mib": rss.peak_root / 2**20, **at, "head_peak_rss_mib": rss.peak_head / 2**20}


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
    result = {"jobs": args.jobs, "cpus": args.cpus, "host": platform.node(), "cpu_count": os.cpu_count(),
              "queueing": {"seconds": queue_s, "jobs_per_s": args.jobs / queue_s},
              "plain_ray": ref, "dispatcher": disp,
              "drain_ratio_vs_plain_ray": disp["jobs_per_s"] / ref["jobs_per_s"]}
    rows = [("queue N runs (store)", f"{queue_s:.2f} s", f"{args.jobs / queue_s:,.0f}", "-", "-"),
            ("plain Ray tasks", f"{ref['seconds']:.1f} s", f"{ref['jobs_per_s']:.1f}", "-",
             "/".join(f"{ref[f'head_rss_at_{p}pct_mib']:.0f}" for p in (10, 50, 90))
             + f" (peak {ref['head_peak_rss_mib']:.0f})"),
            ("through the dispatcher", f"{disp['seconds']:.1f} s", f"{disp['jobs_per_s']:.1f}",
             f"{disp['dispatcher_peak_rss_mib']:.0f}",
             "/".join(f"{disp[f'head_rss_at_{p}pct_of_drain_mib']:.0f}" for p in (10, 50, 90))
             + f" (peak {disp['head_peak_rss_mib']:.0f})")]
    print(f"{args.jobs} no-op jobs, {args.cpus} CPUs")
    print(f"{'':<24} {'time':>10} {'jobs/s':>10} {'dispatcher MiB':>15} {'Ray head MiB at 10/50/90% of the drain':>40}")
    for row in rows:
        print(f"{row[0]:<24} {row[1]:>10} {row[2]:>10} {row[3]:>15} {row[4]:>40}")
    print(f"drain throughput through the dispatcher / plain Ray: {result['drain_ratio_vs_plain_ray']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
