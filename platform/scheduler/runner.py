"""Detached runner: `python -m bitsmith.platform.scheduler.runner --executor ray RUN_ID...`.

`bitsmith submit` without `--wait` starts one of these in its own session, so the jobs outlive the CLI. It is
the dispatcher of its queued runs from the start (`spawn_runner` hands their dispatch lease to its pid); if it
dies before they are claimed, they become orphans that `bitsmith runs recover` adopts.

`BITSMITH_TEST_RUNNER_DELAY_S` (tests only) delays the start of dispatching, so a test can kill a runner
before it claims its runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from ..config import Settings
from .ray_executor import EXECUTORS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitsmith-runner")
    parser.add_argument("--executor", choices=sorted(EXECUTORS), default="ray")
    parser.add_argument("--address", default=None)
    parser.add_argument("run_ids", nargs="+")
    args = parser.parse_args(argv)
    settings = Settings.from_env(ray_address=args.address)
    time.sleep(float(os.environ.get("BITSMITH_TEST_RUNNER_DELAY_S", "0")))
    finals = EXECUTORS[args.executor](args.run_ids, settings)
    for run_id, status in finals.items():
        print(f"[bitsmith-runner] {run_id} {status}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
