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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import store
from .artifacts import (HOST_TAG, drop_object, is_local, local_root, remove_tree, stored_exists,
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
    for path, age in stale_leftovers(settings, grace_s):
        if repair:
            remove_tree(path)
        report.problems.append(Problem("leftover", str(path), f"temp left by an interrupted write, untouched for "
                                       f"{age:.0f}s{'; removed' if repair else ''}", repaired=repair))
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
        return [] if stored_exists(root, art.digest) else [Problem("artifact", art.digest, f"bytes missing at {art.uri}")]
    try:
        verify_stored(root, art.digest, art.digest_version)
    except ArtifactError as exc:
        if not repair or not stored_exists(root, art.digest):
            return [Problem("artifact", art.digest, exc.message)]
        drop_object(root, art.digest, settings.home / "cache")
        return [Problem("artifact", art.digest, f"{exc.message}; dropped the bad copy: import the same file again "
                        "or rerun its producer with --no-cache to store it afresh", repaired=True)]
    return []


def stale_leftovers(settings: Settings, grace_s: float = TEMP_GRACE_S) -> list[tuple[Path, float]]:
    """(path, seconds since last modified) of temp entries no live write owns (see the module docstring)."""
    candidates: list[Path] = []
    if is_local(settings.artifact_root):
        candidates += _children(local_root(settings.artifact_root) / "tmp")
    candidates += [p for p in _children(settings.home / "cache") if p.name.startswith(".")]
    candidates += [p for p in _children(settings.home) if p.name.startswith(IMPORT_STAGING)]
    now = time.time()
    found = []
    for path in candidates:
        age = now - _newest_mtime(path)
        if age > grace_s and not _owner_alive(path.name):
            found.append((path, age))
    return found


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
