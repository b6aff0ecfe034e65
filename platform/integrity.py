"""Check that the store and the artifact root agree (`bitsmith db check`), e.g. after a node was lost.

Finds: artifacts whose stored bytes are missing or do not match their digest (on a remote root the remote
bytes are hashed, not the local cache), temp files and half-copied imports left by a killed write, runs
left running past their lease (nobody is running them any more), succeeded runs that recorded no outputs,
and runs with more attempts than their retries allow.

`repair=True` drops each bad object (so the next writer of those bytes, a re-import or a `--no-cache`
rerun, stores them afresh) and removes stale leftovers. A leftover is stale when nothing under it was
modified for `grace_s` seconds (one hour by default) and the process that wrote it, where its name
records one on this host (`PID.HOST.RANDOM`), is no longer alive: a write in flight is never touched.
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from . import store
from .artifacts import (HOST_TAG, drop_object, is_local, local_root, remote_fs, remove_tree, stored_exists,
                        verify_stored)
from .config import Settings
from .errors import ArtifactError
from .store.records import QUEUED, RUNNING, SUCCEEDED


log = logging.getLogger(__name__)
TEMP_GRACE_S = 3600.0
_OWNER = re.compile(r"(\d+)\.([0-9a-f]{8})\.[0-9a-f]{12}")
IMPORT_STAGING = (".data-", ".model-")  # `data import` / `models import` build folders under BITSMITH_HOME


@dataclass(frozen=True)
class Problem:
    what: str        # "artifact" | "run" | "leftover"
    ref: str         # digest, run id or path
    issue: str
    repaired: bool = False


@dataclass
class IntegrityReport:
    artifacts_checked: int = 0
    runs_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_store(db: Any, settings: Settings, *, verify_bytes: bool = True, repair: bool = False,
                grace_s: float = TEMP_GRACE_S) -> IntegrityReport:
    """Every artifact's stored bytes (digest re-computed when `verify_bytes`), leftovers, every run's state."""
    report = IntegrityReport()
    for art in store.list_artifacts(db, limit=None):
        report.artifacts_checked += 1
        report.problems.extend(_check_object(settings, art, verify_bytes, repair))
    for leftover in stale_leftovers(settings, grace_s):
        if repair:
            leftover.remove()
        report.problems.append(Problem("leftover", leftover.where, f"temp left by an interrupted write, untouched "
                                       f"for {leftover.age_s:.0f}s{'; removed' if repair else ''}", repaired=repair))
    expired = {r.id for r in store.expired_runs(db)}
    orphaned = {r.id for r in store.orphaned_runs(db)}
    for run in store.list_runs(db, limit=None):
        report.runs_checked += 1
        if run.id in orphaned:
            report.problems.append(Problem("run", run.id, f"still {QUEUED} but its dispatcher "
                                           f"{run.lease_owner or '(none)'} is gone (nobody will start it); "
                                           "`bitsmith runs recover` dispatches it"))
        if run.id in expired:
            report.problems.append(Problem("run", run.id, f"still {RUNNING} but its lease expired at "
                                           f"{run.lease_expires_at.isoformat(timespec='seconds')} (held by "
                                           f"{run.lease_owner}); `bitsmith runs recover` re-queues or fails it"))
        if run.attempt > run.max_retries + 1:
            report.problems.append(Problem("run", run.id, f"{run.attempt} attempts for retries={run.max_retries}"))
        if run.status == SUCCEEDED and not store.run_outputs(db, run.id):
            report.problems.append(Problem("run", run.id, "succeeded without any recorded output"))
    return report


def _check_object(settings: Settings, art: Any, verify_bytes: bool, repair: bool) -> list[Problem]:
    root = settings.artifact_root
    if not verify_bytes:
        missing = not stored_exists(root, art.digest)
        return [Problem("artifact", art.digest, f"bytes missing at {art.uri}")] if missing else []
    try:
        verify_stored(root, art.digest, art.digest_version)
    except ArtifactError as exc:
        if not repair or not stored_exists(root, art.digest):
            return [Problem("artifact", art.digest, exc.message)]
        drop_object(root, art.digest, settings.home / "cache")
        return [Problem("artifact", art.digest, f"{exc.message}; dropped the bad copy: import the same file again "
                        "or rerun its producer with --no-cache to store it afresh", repaired=True)]
    return []


@dataclass(frozen=True)
class Leftover:
    where: str                    # a local path, or a URL under a remote root
    age_s: float                  # seconds since anything under it was modified
    remove: Callable[[], None]


def stale_leftovers(settings: Settings, grace_s: float = TEMP_GRACE_S) -> list[Leftover]:
    """Temp entries no live write owns (see the module docstring), local and under a remote root's `tmp/`."""
    candidates: list[Path] = []
    if is_local(settings.artifact_root):
        candidates += _children(local_root(settings.artifact_root) / "tmp")
    candidates += [p for p in _children(settings.home / "cache") if p.name.startswith(".")]
    candidates += [p for p in _children(settings.home) if p.name.startswith(IMPORT_STAGING)]
    now = time.time()
    found = [Leftover(str(path), now - _newest_mtime(path), partial(remove_tree, path)) for path in candidates]
    if not is_local(settings.artifact_root):
        found += _remote_leftovers(settings.artifact_root, now)
    return [f for f in found if f.age_s > grace_s and not _owner_alive(f.where.rsplit("/", 1)[-1])]


def _remote_leftovers(root: str, now: float) -> list[Leftover]:
    fs, base = remote_fs(root)
    if not fs.exists(f"{base}/tmp"):
        return []
    found = []
    for entry in fs.ls(f"{base}/tmp", detail=True):
        infos = [entry, *fs.find(entry["name"], detail=True).values()] if entry["type"] == "directory" else [entry]
        stamps = [_info_time(info) for info in infos]
        if any(stamp is None for stamp in stamps):
            continue  # a filesystem that keeps no times: never guess an age
        found.append(Leftover(f"{root.rstrip('/')}/tmp/{entry['name'].rsplit('/', 1)[-1]}", now - max(stamps),
                              partial(fs.rm, entry["name"], recursive=True)))
    return found


def _info_time(info: dict[str, Any]) -> float | None:
    """An fsspec entry's modification (or creation) time as a POSIX timestamp, if it keeps one."""
    stamp = info.get("mtime", info.get("LastModified", info.get("created")))
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    return float(stamp) if isinstance(stamp, (int, float)) else None


def _children(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _newest_mtime(path: Path) -> float:
    newest = os.lstat(path).st_mtime
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in [*dirnames, *filenames]:
                newest = max(newest, os.lstat(Path(dirpath) / name).st_mtime)
    return newest


def _owner_alive(name: str) -> bool:
    """Whether the name records a writer on this host that is still running."""
    match = _OWNER.search(name)
    if match is None or match.group(2) != HOST_TAG:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def damaged_outputs(db: Any, run_id: str) -> str | None:
    """None when every output of run `run_id` is stored and verifies (a cache hit may reuse them), else why not.

    Each object is checked where its row says it lives, with the digest encoding its row records.
    """
    for edge in sorted(store.run_outputs(db, run_id), key=lambda e: e.role):
        art = store.get_artifact(db, edge.digest)
        try:
            verify_stored(art.uri.rsplit("/objects/", 1)[0], art.digest, art.digest_version)
        except ArtifactError as exc:
            log.warning("run %s: output %r: %s; running the job again instead of reusing it",
                        run_id, edge.role, exc.message)
            return f"output {edge.role!r}: {exc.message}"
    return None
