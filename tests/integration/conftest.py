"""Drive the real `bitsmith` CLI in subprocesses against an isolated home (SQLite + local artifacts)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class CLIResult:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


class BitsmithCLI:
    def __init__(self, home: Path, extra_env: dict[str, str] | None = None):
        self.home = home
        self.env = {**os.environ, "BITSMITH_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0",
                    "BITSMITH_NO_PROGRESS": "1", "COLUMNS": "200", **(extra_env or {})}
        self.env.pop("BITSMITH_DB_URL", None) if not extra_env or "BITSMITH_DB_URL" not in extra_env else None
        self.env.pop("BITSMITH_ARTIFACT_ROOT", None)

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> CLIResult:
        proc = subprocess.run([sys.executable, "-m", "bitsmith.platform.cli.main", *map(str, args)],
                              cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        res = CLIResult(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"bitsmith {' '.join(map(str, args))} exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return res

    def write_spec(self, name: str, text: str) -> Path:
        path = self.home / "specs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path


@pytest.fixture
def cli(tmp_path) -> BitsmithCLI:
    return BitsmithCLI(tmp_path / "home")


@pytest.fixture
def make_cli():
    """Factory for a CLI with extra environment (e.g. a PostgreSQL BITSMITH_DB_URL)."""
    return BitsmithCLI


