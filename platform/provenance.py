"""What makes a result reproducible: the code version, the environment, and the cache key."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

CODE_DIRS = ("platform", "workers", "kernels", "migrations")


def source_root() -> Path:
    """The folder holding platform/, workers/, kernels/ (the repo root for an editable install)."""
    import bitsmith.platform

    return Path(list(bitsmith.platform.__path__)[0]).resolve().parent


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode(errors="replace")


def code_version() -> dict[str, Any]:
    """Package version + git commit + a hash of uncommitted changes to the code folders (None when clean)."""
    try:
        package = importlib.metadata.version("bitsmith")
    except importlib.metadata.PackageNotFoundError:
        package = "unknown"
    root = source_root()
    commit = dirty_hash = None
    if (root / ".git").exists():
        commit = (_git(["rev-parse", "HEAD"], root) or "").strip() or None
        diff = _git(["diff", "HEAD", "--", *CODE_DIRS], root) or ""
        untracked = _git(["ls-files", "--others", "--exclude-standard", "--", *CODE_DIRS], root) or ""
        if untracked.strip():
            h = hashlib.sha256()
            for rel in sorted(untracked.split()):
                p = root / rel
                if p.is_file():
                    h.update(rel.encode() + b"\0" + p.read_bytes())
            diff += "\nuntracked:" + h.hexdigest()
        if diff.strip():
            dirty_hash = hashlib.sha256(diff.encode()).hexdigest()[:16]
    return {"package": package, "commit": commit, "dirty_hash": dirty_hash}


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions, device and determinism flags of the process that runs a job."""
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "packages": dict(_package_versions()),
    }
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda_available"] = torch.cuda.is_available()
        env["device"] = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["cuda"] = torch.version.cuda
        env["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
        env["default_dtype"] = str(torch.get_default_dtype()).replace("torch.", "")
        env["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    except ImportError:
        env["device"] = device or "cpu"
    env["cpu_count"] = os.cpu_count()
    return env


@functools.lru_cache(maxsize=1)
def _package_versions() -> tuple[tuple[str, str | None], ...]:
    """Installed versions of the libraries results depend on (fixed for the life of a process)."""
    out = []
    for name in ("torch", "transformers", "ray", "safetensors", "tokenizers", "numpy", "pydantic", "sqlalchemy"):
        try:
            out.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            out.append((name, None))
    return tuple(out)


def cache_key(kind: str, semantic_spec_json: str, input_digests: dict[str, str], code: dict[str, Any]) -> str:
    """sha256 over kind, the semantic part of the canonical spec, input digests and the code version."""
    payload = json.dumps({"kind": kind, "spec": json.loads(semantic_spec_json),
                          "inputs": dict(sorted(input_digests.items())), "code": code},
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()
