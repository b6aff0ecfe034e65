"""State-changing actions of the web interface (cancel, tag, reproduce, resume a sweep); the server registers
them only when started with a write token, and its middleware checks that token on every write."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from .. import store
from ..errors import UsageError
from ..store.ui_rows import edit_run_tags

MAX_TAGS, MAX_TAG_CHARS = 64, 100


def cancel_run(db: Any, ref: str) -> dict[str, Any]:
    r = store.get_run(db, ref)
    after = store.request_cancel(db, r.id)
    return {"run_id": after.id, "status": after.status, "cancel_requested": after.cancel_requested}


def _check_tags(tags: list[str], field: str) -> list[str]:
    for tag in tags:
        if not tag.strip() or len(tag) > MAX_TAG_CHARS or any(ord(c) < 32 for c in tag):
            raise UsageError(f"{field} {tag[:40]!r}: expected a non-empty tag of at most {MAX_TAG_CHARS} printable "
                             "characters")
    return tags


def change_tags(db: Any, ref: str, add: list[str], remove: list[str]) -> dict[str, Any]:
    """Add and remove tags of a run in one transaction (the run row's tags column only)."""
    add, remove = _check_tags(add, "add"), _check_tags(remove, "remove")
    run_id = store.get_run(db, ref).id

    def edit(current: list[str]) -> list[str]:
        tags = [t for t in current if t not in remove]
        tags += [t for t in dict.fromkeys(add) if t not in tags]
        if len(tags) > MAX_TAGS:
            raise UsageError(f"tags: {len(tags)} tags; expected at most {MAX_TAGS} on a run")
        return tags

    return {"run_id": run_id, "tags": edit_run_tags(db, run_id, edit)}


def _spawn(settings: Any, args: list[str], log_name: str, run_dir: str) -> dict[str, Any]:
    """Start `bitsmith ARGS` detached with this server's settings; its output goes to a log under the runs dir."""
    log_path = settings.runs_dir / run_dir / log_name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.env(), "BITSMITH_NO_PROGRESS": "1"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bitsmith.platform.cli.main", *args], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    return {"pid": proc.pid, "log": str(log_path), "command": ["bitsmith", *args]}


def reproduce_run(db: Any, settings: Any, ref: str, executor: str) -> dict[str, Any]:
    r = store.get_run(db, ref)
    original = store.get_run(db, r.cache_hit_of) if r.cache_hit_of else r
    if original.status != "succeeded":
        raise UsageError(f"reproduce {ref}: run {original.id} is {original.status}; expected a succeeded run")
    return _spawn(settings, ["reproduce", original.id, "--executor", executor], "reproduce.log", original.id)


def resume_sweep(db: Any, settings: Any, ref: str, executor: str) -> dict[str, Any]:
    record = store.get_sweep(db, ref)
    return _spawn(settings, ["sweep", "resume", record.id, "--executor", executor], "resume.log",
                  f"sweep-{record.id}")
