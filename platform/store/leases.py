"""Leases: who holds a run (`host:pid[@node]`), whether that process is gone, and lease column values.

A lease is stamped on the database's clock (`store.clock.db_clock`), so a machine with a skewed clock can
neither stamp leases others take for expired nor take live leases for expired.
"""
from __future__ import annotations

import os
import socket
from typing import Any

from .clock import db_clock


def lease_owner(node: str | None = None, pid: int | None = None) -> str:
    """`host:pid` of this process, or of process `pid` on this host (and `@node`, a Ray node id, when given)."""
    owner = f"{socket.gethostname()}:{pid or os.getpid()}"
    return f"{owner}@{node}" if node else owner


def owner_is_gone(owner: str | None) -> bool:
    """True when `owner` names a process on this host that no longer exists (no need to wait for its lease)."""
    if not owner or ":" not in owner:
        return False
    host, rest = owner.split(":", 1)
    if host != socket.gethostname():
        return False
    try:
        pid = int(rest.split("@", 1)[0])
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A process that exited but was not reaped yet (e.g. killed, its parent gone) is gone too."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def lease_values(owner: str, lease_s: float) -> dict[str, Any]:
    """Column values that give `owner` a lease of `lease_s` seconds, stamped on the database's clock."""
    return {"lease_owner": owner, "heartbeat_at": db_clock(), "lease_expires_at": db_clock(lease_s)}
