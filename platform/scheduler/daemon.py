"""Start the store's dispatcher as a detached daemon (once), wait for it, stop it.

The daemon's log is `$BITSMITH_HOME/scheduler/dispatcher.log`. A file lock and a pid file under the same folder
keep two submissions at once from starting two daemons on one machine; across machines the store's dispatcher
lease decides (the second one refuses and exits).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .. import store
from ..config import Settings
from ..errors import UsageError
from ..store import queue
from ..store.records import DispatcherRecord
from .admission import env_node_resources

START_TIMEOUT_S = 120.0


def scheduler_dir(settings: Settings) -> Path:
    return settings.home / "scheduler"


def log_path(settings: Settings) -> Path:
    return scheduler_dir(settings) / "dispatcher.log"


def _pid_file(settings: Settings) -> Path:
    return scheduler_dir(settings) / "dispatcher.pid"


def _starting_pid(settings: Settings) -> int | None:
    """The pid of a dispatcher this home started that is still alive (it may not hold the lease yet)."""
    try:
        pid = int(_pid_file(settings).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"bitsmith.platform.scheduler.dispatcher" in cmdline else None


def ensure_dispatcher(settings: Settings, db: Any, *, max_in_flight: int | None = None,
                      num_cpus: int | None = None, resources: dict[str, float] | None = None) -> int | None:
    """Start a detached dispatcher unless one holds the store's lease or is starting; the new pid, else None.
    `resources`: the custom resources of its embedded Ray (default: BITSMITH_RAY_RESOURCES, checked here so a
    bad value is refused before the daemon starts)."""
    from filelock import FileLock

    if resources is None:
        resources = env_node_resources()
    record = queue.get_dispatcher(db)
    if record is not None and record.alive:
        return None
    scheduler_dir(settings).mkdir(parents=True, exist_ok=True)
    with FileLock(str(scheduler_dir(settings) / "spawn.lock"), timeout=60):
        record = queue.get_dispatcher(db)
        if (record is not None and record.alive) or _starting_pid(settings) is not None:
            return None
        cmd = [sys.executable, "-m", "bitsmith.platform.scheduler.dispatcher"]
        if settings.ray_address:
            cmd += ["--address", settings.ray_address]
        if max_in_flight is not None:
            cmd += ["--max-in-flight", str(max_in_flight)]
        if num_cpus is not None:
            cmd += ["--num-cpus", str(num_cpus)]
        if resources is not None:
            cmd += ["--resources", json.dumps(resources)]
        env = {**os.environ, **settings.env(), "BITSMITH_NO_PROGRESS": "1"}
        with open(log_path(settings), "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True, cwd=str(settings.home))
        _pid_file(settings).write_text(f"{proc.pid}\n")
        return proc.pid


def wait_until_serving(settings: Settings, db: Any, pid: int | None,
                       timeout_s: float = START_TIMEOUT_S) -> DispatcherRecord:
    """Wait until the store has a live dispatcher that reported its Ray address; a UsageError if `pid` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = queue.get_dispatcher(db)
        if record is not None and record.alive and record.state:
            return record
        if pid is not None and not _alive(pid):
            raise UsageError(f"scheduler: the dispatcher (pid {pid}) exited while starting; expected it to "
                             f"serve; its log: {log_path(settings)}", hint=f"tail {log_path(settings)}")
        time.sleep(0.2)
    raise UsageError(f"scheduler: no dispatcher serving after {timeout_s:.0f} s; expected one; its log: "
                     f"{log_path(settings)}", hint=f"tail {log_path(settings)}")


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it if it exited
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def stop_dispatcher(db: Any, *, force: bool = False, timeout_s: float = 600.0) -> DispatcherRecord | None:
    """SIGTERM the store's dispatcher (it finishes the runs in flight; `force`: a second signal, it exits at once)
    and wait until it released its lease; the record it had, or None when none was serving."""
    record = queue.get_dispatcher(db)
    if record is None or not record.alive:
        return None
    host, pid = record.owner.split(":", 1)
    if host != socket.gethostname():
        raise UsageError(f"scheduler stop: the dispatcher {record.owner} runs on host {host!r}; expected it on this "
                         f"host ({socket.gethostname()}); stop it there (SIGTERM its process, or its pod)")
    os.kill(int(pid), signal.SIGTERM)
    if force:
        time.sleep(0.2)
        os.kill(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = queue.get_dispatcher(db)
        if now is None or now.owner != record.owner or not now.alive or store.owner_is_gone(record.owner):
            return record
        time.sleep(0.2)
    raise UsageError(f"scheduler stop: dispatcher {record.owner} still serving after {timeout_s:.0f} s (it waits for "
                     "the runs in flight); expected it to stop", hint="bitsmith scheduler stop --now")
