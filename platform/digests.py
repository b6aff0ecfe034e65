"""Content digests: a file's sha256; a directory's sha256 over the sorted manifest of its files."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CHUNK_BYTES = 1 << 20
ARTIFACT_META_FILE = "artifact.json"  # optional self-description inside a directory artifact


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def directory_manifest(root: str | Path) -> list[tuple[str, str, int]]:
    """(relative posix path, sha256, size) of every regular file under `root`, sorted by path.

    Symlinks are refused: an artifact is its bytes, never a pointer out of the store.
    """
    root = Path(root)
    entries: list[tuple[str, str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            if full.is_symlink():
                raise ValueError(f"{full}: symlinks cannot be stored in an artifact; copy the file instead")
            rel = full.relative_to(root).as_posix()
            entries.append((rel, sha256_file(full), full.stat().st_size))
        for name in dirnames:
            if (Path(dirpath) / name).is_symlink():
                raise ValueError(f"{Path(dirpath) / name}: symlinks cannot be stored in an artifact")
    entries.sort()
    return entries


def manifest_digest(entries: list[tuple[str, str, int]]) -> str:
    h = hashlib.sha256()
    for rel, digest, size in entries:
        h.update(f"{rel}\t{digest}\t{size}\n".encode())
    return h.hexdigest()


def digest_path(path: str | Path) -> str:
    """Digest of a file or directory (directories: over the manifest of relative paths and digests)."""
    path = Path(path)
    if path.is_dir():
        return manifest_digest(directory_manifest(path))
    if path.is_file():
        return sha256_file(path)
    raise FileNotFoundError(f"{path}: no such file or directory")


def path_size_bytes(path: str | Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(size for _, _, size in directory_manifest(path))
    return path.stat().st_size


def read_artifact_meta(path: str | Path) -> dict[str, Any]:
    """The `artifact.json` self-description of a directory artifact, or {}."""
    meta_file = Path(path) / ARTIFACT_META_FILE
    if Path(path).is_dir() and meta_file.is_file():
        return json.loads(meta_file.read_text())
    return {}
