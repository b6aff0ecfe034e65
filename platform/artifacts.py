"""Content-addressed artifact bytes: stored once under the artifact root, written atomically, verified on read.

Layout: `ROOT/objects/ab/abcdef…` (a file, or a directory for directory artifacts) and `ROOT/tmp/`
for writes in flight. ROOT is a local directory or any fsspec URL; remote objects are materialised
into a local cache before a worker reads them. Object paths derive only from validated hex digests,
so nothing a user names can escape the root.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from .digests import digest_path, path_size_bytes
from .errors import ArtifactError

log = logging.getLogger(__name__)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class StoredObject:
    digest: str
    uri: str
    size_bytes: int
    is_dir: bool


def _check_digest(digest: str) -> str:
    if not _HEX64.match(digest):
        raise ArtifactError(f"artifact digest {digest!r}: not a sha256 hex digest; expected 64 lowercase hex digits")
    return digest


def _is_local(root: str) -> bool:
    return "://" not in root or root.startswith("file://")


def _local_root(root: str) -> Path:
    return Path(root[len("file://"):] if root.startswith("file://") else root).expanduser()


def object_uri(root: str, digest: str) -> str:
    _check_digest(digest)
    return f"{root.rstrip('/')}/objects/{digest[:2]}/{digest}"


def put_object(root: str, src: str | Path, *, move: bool = False) -> StoredObject:
    """Store a file or directory under its digest (deduplicated; atomic temp-then-rename)."""
    src = Path(src)
    if not src.exists():
        raise ArtifactError(f"{src}: output path does not exist; expected a file or directory written by the job")
    digest = digest_path(src)
    size = path_size_bytes(src)
    uri = object_uri(root, digest)
    if _is_local(root):
        final = _local_root(root) / "objects" / digest[:2] / digest
        if not final.exists():
            tmp = _local_root(root) / "tmp" / f"{digest[:12]}-{uuid.uuid4().hex}"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                if move:
                    shutil.move(str(src), str(tmp))
                elif src.is_dir():
                    shutil.copytree(src, tmp)
                else:
                    shutil.copy2(src, tmp)
                _make_read_only(tmp)
                try:
                    os.rename(tmp, final)  # atomic; loses harmlessly to a concurrent writer of the same bytes
                except OSError:
                    if not final.exists():
                        raise
            finally:
                if tmp.exists():
                    _remove(tmp)
    else:
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        if not fs.exists(path):
            tmp_path = f"{fs._strip_protocol(root).rstrip('/')}/tmp/{digest[:12]}-{uuid.uuid4().hex}"
            fs.put(str(src), tmp_path, recursive=src.is_dir())
            fs.mv(tmp_path, path, recursive=src.is_dir())
    return StoredObject(digest=digest, uri=uri, size_bytes=size, is_dir=src.is_dir())


def materialize(root: str, digest: str, cache_dir: Path, *, verify: bool = True) -> Path:
    """A local path holding the artifact's bytes, with the digest checked (fails loudly on corruption)."""
    _check_digest(digest)
    if _is_local(root):
        path = _local_root(root) / "objects" / digest[:2] / digest
        if not path.exists():
            raise ArtifactError(f"artifact {digest[:12]}: bytes missing at {path}; expected them under the artifact "
                                f"root {root}", hint="is BITSMITH_ARTIFACT_ROOT the root this store was used with?")
    else:
        import fsspec

        path = Path(cache_dir) / digest
        if not path.exists():
            fs, remote = fsspec.core.url_to_fs(object_uri(root, digest))
            if not fs.exists(remote):
                raise ArtifactError(f"artifact {digest[:12]}: bytes missing at {object_uri(root, digest)}")
            tmp = Path(cache_dir) / f".{digest}-{uuid.uuid4().hex}"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            fs.get(remote, str(tmp), recursive=fs.isdir(remote))
            os.rename(tmp, path)
    if verify:
        verify_object(path, digest)
    return path


def verify_object(path: Path, digest: str) -> None:
    try:
        actual = digest_path(path)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"artifact {digest[:12]} at {path}: unreadable ({exc})") from None
    if actual != digest:
        raise ArtifactError(
            f"artifact {digest[:12]} at {path}: content digest is {actual[:12]}, expected {digest[:12]}; "
            "the stored copy is corrupted",
            hint="rerun the run that produced it with --no-cache, or restore the artifact root from a backup")


def copy_out(src: Path, dest: Path) -> Path:
    """Copy materialised artifact bytes to a user destination (never overwriting), writable again."""
    dest = Path(dest)
    if dest.exists() and dest.is_dir() and not src.is_dir():
        dest = dest / src.name
    if dest.exists():
        raise ArtifactError(f"{dest}: already exists; expected a new path to copy the artifact to")
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        shutil.copyfile(src, tmp)
    _make_writable(tmp)
    os.rename(tmp, dest)
    return dest


def _make_read_only(path: Path) -> None:
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if p.is_file():
            p.chmod(0o444)


def _make_writable(path: Path) -> None:
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def _remove(path: Path) -> None:
    if path.is_dir():
        _make_writable(path)
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
