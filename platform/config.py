"""Where bitsmith keeps things: home directory, database URL, artifact root, Ray address.

Everything comes from explicit arguments or environment variables, read when asked (no import-time state):
`BITSMITH_HOME` (default ~/.bitsmith), `BITSMITH_DB_URL` (default: SQLite in the home),
`BITSMITH_ARTIFACT_ROOT` (default: $BITSMITH_HOME/artifacts; any fsspec URL), `BITSMITH_RAY_ADDRESS`,
`BITSMITH_LEASE_S` (how long a running job's lease, or a queued job's dispatcher lease, lasts without renewal;
default 30 s).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def bitsmith_home() -> Path:
    return Path(os.environ.get("BITSMITH_HOME") or Path.home() / ".bitsmith").expanduser()


def default_db_url() -> str:
    return os.environ.get("BITSMITH_DB_URL") or f"sqlite:///{bitsmith_home() / 'bitsmith.db'}"


def default_artifact_root() -> str:
    return os.environ.get("BITSMITH_ARTIFACT_ROOT") or str(bitsmith_home() / "artifacts")


def default_ray_address() -> str | None:
    return os.environ.get("BITSMITH_RAY_ADDRESS") or None


DEFAULT_LEASE_S = 30.0


def default_lease_s() -> float:
    """`BITSMITH_LEASE_S`: seconds a running job's lease lasts without a heartbeat (at least 1)."""
    raw = os.environ.get("BITSMITH_LEASE_S")
    if not raw:
        return DEFAULT_LEASE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 1.0:
        from .errors import UsageError

        raise UsageError(f"BITSMITH_LEASE_S={raw!r}: expected a number of seconds >= 1")
    return value


@dataclass(frozen=True)
class Settings:
    """The resolved locations one CLI invocation (or one executor task) works with."""

    db_url: str
    artifact_root: str
    home: Path
    ray_address: str | None = None
    lease_s: float = DEFAULT_LEASE_S

    @classmethod
    def from_env(cls, db_url: str | None = None, artifact_root: str | None = None,
                 ray_address: str | None = None) -> "Settings":
        return cls(db_url=db_url or default_db_url(), artifact_root=artifact_root or default_artifact_root(),
                   home=bitsmith_home(), ray_address=ray_address or default_ray_address(),
                   lease_s=default_lease_s())

    @property
    def runs_dir(self) -> Path:
        """Per-run work dirs and logs (local to the machine that runs the job)."""
        return self.home / "runs"

    def env(self) -> dict[str, str]:
        """Environment variables that make a child process (Ray worker, runner) see the same settings."""
        return {"BITSMITH_HOME": str(self.home), "BITSMITH_DB_URL": self.db_url,
                "BITSMITH_ARTIFACT_ROOT": self.artifact_root, "BITSMITH_LEASE_S": str(self.lease_s)}
