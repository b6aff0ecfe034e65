"""Detached runner: `python -m bitsmith.platform.scheduler.runner --executor ray RUN_ID...`.

`bitsmith submit` without `--wait` starts one of these in its own session, so the jobs outlive the CLI.
"""
from __future__ import annotations

import argparse
import sys

from ..config import Settings
from .ray_executor import EXECUTORS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitsmith-runner")
    parser.add_argument("--executor", choices=sorted(EXECUTORS), default="ray")
    parser.add_argument("--address", default=None)
    parser.add_argument("run_ids", nargs="+")
    args = parser.parse_args(argv)
    settings = Settings.from_env(ray_address=args.address)
    finals = EXECUTORS[args.executor](args.run_ids, settings)
    for run_id, status in finals.items():
        print(f"[bitsmith-runner] {run_id} {status}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
