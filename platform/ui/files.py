"""Artifact bytes for download, read only through the store's object paths and never outside the artifact root."""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from .. import store
from ..artifacts import is_local, local_root, object_uri
from ..errors import ArtifactError, NotFoundError, UsageError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_JSON_BYTES = 16 << 20


class DownloadRefused(ArtifactError):
    """A download that would read something other than a regular file inside a registered artifact."""


def _refuse(why: str) -> DownloadRefused:
    return DownloadRefused(f"artifact download: {why}; expected a registered digest and a plain relative path "
                           "inside it")


def object_file(db: Any, artifact_root: str, digest: str, rel_path: str | None = None) -> tuple[Path, Any]:
    """The regular file of artifact `digest` (or `rel_path` inside a directory artifact) and its record.

    The digest must be a full registered one; the path is the store's object path under `artifact_root`;
    `rel_path` may not be absolute or contain `..`; no component (the object itself included) may be a
    symlink, and the result must resolve inside the object, so crafted names cannot read other files.
    """
    if not _HEX64.match(digest or ""):
        raise UsageError(f"artifact {digest[:80]!r}: expected a full sha256 digest (64 lowercase hex digits)")
    record = store.get_artifact(db, digest)
    if record.digest != digest:
        raise NotFoundError(f"artifact {digest!r}: not registered")
    if not is_local(artifact_root):
        raise UsageError(f"artifact download: the artifact root {artifact_root!r} is remote; expected a local one")
    root = local_root(artifact_root).resolve()
    base = Path(object_uri(str(root), digest))
    parts: list[str] = []
    if rel_path:
        if "\x00" in rel_path or rel_path.startswith(("/", "\\")):
            raise _refuse(f"path {rel_path[:80]!r} is absolute")
        parts = [p for p in rel_path.replace("\\", "/").split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            raise _refuse(f"path {rel_path[:80]!r} leaves the artifact")
        if not record.is_dir:
            raise _refuse("a path was given for a single-file artifact")
    elif record.is_dir:
        raise _refuse("the artifact is a directory; pick a file in it (path=...)")
    current = base
    for part in [None, *parts]:
        if part is not None:
            current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            raise NotFoundError(f"artifact {digest[:12]}: {'/'.join(parts) or 'its object'} is not stored") from None
        if stat.S_ISLNK(st.st_mode):
            raise _refuse(f"{'/'.join(parts) or 'the object'} is a symlink")
    resolved = current.resolve()
    if not (resolved == base.resolve() or base.resolve() in resolved.parents) or root not in resolved.parents:
        raise _refuse("the path resolves outside the artifact")
    if not resolved.is_file():
        raise _refuse(f"{'/'.join(parts) or 'the object'} is not a regular file")
    return resolved, record


def list_files(db: Any, artifact_root: str, digest: str, limit: int = 1000) -> list[dict[str, Any]]:
    """Relative paths and sizes of the regular files of a directory artifact (symlinks skipped), at most `limit`."""
    record = store.get_artifact(db, digest)
    if not record.is_dir or not is_local(artifact_root):
        return []
    base = Path(object_uri(str(local_root(artifact_root).resolve()), record.digest))
    out: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            out.append({"path": path.relative_to(base).as_posix(), "size_bytes": path.stat().st_size})
            if len(out) >= limit:
                return out
        dirnames.sort()
    return out


def read_json(db: Any, artifact_root: str, digest: str, rel_path: str | None = None) -> Any:
    """A JSON file of an artifact, parsed (json only: nothing in an artifact is ever executed)."""
    path, _ = object_file(db, artifact_root, digest, rel_path)
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ArtifactError(f"artifact {digest[:12]}: {rel_path or 'file'} is over {MAX_JSON_BYTES >> 20} MB; "
                            "expected a small JSON file")
    return json.loads(path.read_text(encoding="utf-8"))
