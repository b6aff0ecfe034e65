"""Content-addressed artifact bytes: stored once under the artifact root, written durably, verified on read.

Layout: `ROOT/objects/ab/abcdef…` (a file, or a directory for directory artifacts), `ROOT/tmp/` for
writes in flight and `ROOT/suspect/DIGEST` marks for objects a reader found corrupted. ROOT is a local
directory (or `file://` URL) or any fsspec URL; remote objects are materialised into a local cache
before a worker reads them. Object paths derive only from validated hex digests, so nothing a user
names can escape the root.

Writes (local roots): the copy is made in `ROOT/tmp/`, every file and folder in it is made read-only
(files 0o444, folders 0o555) and fsynced, then it is renamed into place and the parent folder is
fsynced, all before `put_object` returns (so before any row naming it commits). A writer that finds
the object already there checks it (type and size always, the full digest when it is at most
`FULL_CHECK_BYTES` or marked suspect) and replaces a bad copy: a file by an atomic rename over it, a
folder by moving the bad copy aside first (a reader in that instant sees it missing, as it would have
seen it corrupted). Remote roots have no atomic folder rename: a folder is uploaded to `ROOT/tmp/` and
then moved into place file by file, so concurrent writers (who hold the same bytes) never nest one
copy inside another.
Permission bits do not stop root: a worker running as root could still write into an input, which
the digest check on the next read would then catch.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .digests import (CURRENT_DIGEST_VERSION, DIGEST_V1, DIGEST_V2, digest_and_size, digest_path,
                      directory_manifest, manifest_digest)
from .errors import ArtifactError, UnstorableError

log = logging.getLogger(__name__)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
FULL_CHECK_BYTES = 64 << 20  # an existing object up to this size is re-hashed by every writer that finds it
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


@dataclass(frozen=True)
class StoredObject:
    digest: str
    uri: str
    size_bytes: int
    is_dir: bool
    digest_version: int = CURRENT_DIGEST_VERSION


def _check_digest(digest: str) -> str:
    if not _HEX64.match(digest):
        raise ArtifactError(f"artifact digest {digest!r}: not a sha256 hex digest; expected 64 lowercase hex digits")
    return digest


def is_local(root: str) -> bool:
    return "://" not in root or root.startswith("file://")


def local_root(root: str) -> Path:
    return Path(root[len("file://"):] if root.startswith("file://") else root).expanduser()


def object_uri(root: str, digest: str) -> str:
    _check_digest(digest)
    return f"{root.rstrip('/')}/objects/{digest[:2]}/{digest}"


def temp_name(prefix: str = "") -> str:
    """A temp entry name that records its writer (`PID.HOST.RANDOM`), so cleanup can spare live writers."""
    return f"{prefix}{os.getpid()}.{HOST_TAG}.{uuid.uuid4().hex[:12]}"


def remote_fs(root: str) -> tuple[Any, str]:
    import fsspec

    fs, base = fsspec.core.url_to_fs(root)
    return fs, base.rstrip("/")


# ---------------------------------------------------------------------------------------------- writes

def put_object(root: str, src: str | Path, *, move: bool = False) -> StoredObject:
    """Store a file or directory under its digest (deduplicated, durable, a bad existing copy replaced)."""
    src = Path(src)
    if not os.path.lexists(src):
        raise ArtifactError(f"{src}: output path does not exist; expected a file or directory written by the job")
    digest, size = digest_and_size(src)
    is_dir = src.is_dir()
    if is_local(root):
        _put_local(local_root(root), src, digest, size, is_dir, move)
    else:
        _put_remote(root, src, digest, size, is_dir)
    return StoredObject(digest=digest, uri=object_uri(root, digest), size_bytes=size, is_dir=is_dir)


def _put_local(root_dir: Path, src: Path, digest: str, size: int, is_dir: bool, move: bool) -> None:
    final = root_dir / "objects" / digest[:2] / digest
    if _local_intact(root_dir, final, digest, size, is_dir):
        return
    tmp = root_dir / "tmp" / temp_name()
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if not final.parent.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        fsync_path(final.parent.parent)  # the new shard folder's entry too
    try:
        if move:
            shutil.move(str(src), str(tmp))
        elif is_dir:
            shutil.copytree(src, tmp)
        else:
            shutil.copy2(src, tmp)
        seal(tmp)
        if is_dir and os.path.lexists(final) and not _local_intact(root_dir, final, digest, size, is_dir):
            _drop_local(root_dir, final)  # a bad folder: set it aside, then publish ours
        _publish_local(tmp, final, is_dir)
    finally:
        if os.path.lexists(tmp):
            remove_tree(tmp)
    _set_suspect(str(root_dir), digest, False)


def _publish_local(tmp: Path, final: Path, is_dir: bool) -> None:
    """Rename the sealed temp copy into place (losing harmlessly to a concurrent writer) and fsync it."""
    if is_dir:
        try:
            os.rename(tmp, final)  # atomic; fails if a concurrent writer's copy is already there
        except OSError:
            if not final.is_dir():
                raise
        else:
            os.chmod(final, 0o555)
            fsync_path(final)
    else:
        os.replace(tmp, final)  # atomic, also over a bad copy; a concurrent writer's copy holds the same bytes
    fsync_path(final.parent)


def seal(path: Path) -> None:
    """Make a fresh copy read-only (files 0o444, subfolders 0o555) and fsync every file and folder in it.

    The top folder stays writable until it is renamed into place: moving a folder to another parent
    needs write permission on it.
    """
    if not path.is_dir():
        os.chmod(path, 0o444)
        fsync_path(path)
        return
    os.chmod(path, 0o755)  # a copy of a read-only folder arrives read-only
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            os.chmod(Path(dirpath) / name, 0o444)
            fsync_path(Path(dirpath) / name)
        for name in dirnames:
            os.chmod(Path(dirpath) / name, 0o555)
            fsync_path(Path(dirpath) / name)
    fsync_path(path)


def fsync_path(path: Path) -> None:
    """Flush a file's bytes, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tree_size(path: Path) -> int:
    if not path.is_dir():
        return path.stat().st_size
    return sum(os.lstat(Path(d) / f).st_size for d, _, files in os.walk(path) for f in files)


def _check_type(final: str, digest: str, found_dir: bool, is_dir: bool) -> None:
    if found_dir != is_dir:
        raise ArtifactError(f"artifact {digest[:12]}: a stored {'directory' if found_dir else 'file'} at {final} "
                            f"has this digest, expected a {'directory' if is_dir else 'file'}; refusing to store "
                            "over it (a version-1 directory manifest equals this file's bytes)")


def _local_intact(root_dir: Path, final: Path, digest: str, size: int, is_dir: bool) -> bool:
    """Whether the object at `final` exists with the right type and size and, when cheap or suspect, digest."""
    if not os.path.lexists(final):
        return False
    _check_type(str(final), digest, final.is_dir(), is_dir)
    try:
        if _tree_size(final) != size:
            return False
        if size <= FULL_CHECK_BYTES or _is_suspect(str(root_dir), digest):
            return digest_path(final, strict=False) == digest
    except (OSError, UnstorableError):
        return False
    return True


def _drop_local(root_dir: Path, final: Path) -> None:
    aside = root_dir / "tmp" / temp_name("dropped-")
    aside.parent.mkdir(parents=True, exist_ok=True)
    if final.is_dir():
        os.chmod(final, 0o755)  # moving a folder to another parent needs write permission on it
    try:
        os.rename(final, aside)
    except FileNotFoundError:  # a concurrent writer set it aside first
        return
    fsync_path(final.parent)
    remove_tree(aside)


def _put_remote(root: str, src: Path, digest: str, size: int, is_dir: bool) -> None:
    """Upload to `ROOT/tmp/`, then move file by file into place (never a folder onto a folder)."""
    fs, base = remote_fs(root)
    final = f"{base}/objects/{digest[:2]}/{digest}"
    if _remote_intact(root, fs, final, digest, size, is_dir):
        return
    tmp = f"{base}/tmp/{temp_name()}"
    try:
        fs.put(str(src), tmp, recursive=is_dir)
        if is_dir:
            _publish_remote_dir(fs, tmp, final)
        else:
            fs.mv(tmp, final)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)
    _set_suspect(root, digest, False)


def _publish_remote_dir(fs: Any, tmp: str, final: str) -> None:
    """Move each uploaded file to its place under `final`, dropping files a bad copy had in excess."""
    uploaded = {name[len(tmp) + 1:] for name in fs.find(tmp)}
    if fs.exists(final):
        if not fs.isdir(final):
            fs.rm(final)
        else:
            for name in fs.find(final):
                if name[len(final) + 1:] not in uploaded:
                    fs.rm(name)
    for rel in sorted(uploaded):
        fs.makedirs(f"{final}/{rel}".rsplit("/", 1)[0], exist_ok=True)
        fs.mv(f"{tmp}/{rel}", f"{final}/{rel}")  # per file: concurrent writers hold the same bytes


def _remote_size(fs: Any, path: str) -> int:
    if fs.isdir(path):
        return sum(info["size"] for info in fs.find(path, detail=True).values())
    return fs.size(path)


def _remote_intact(root: str, fs: Any, final: str, digest: str, size: int, is_dir: bool) -> bool:
    if not fs.exists(final):
        return False
    _check_type(final, digest, fs.isdir(final), is_dir)
    try:
        if _remote_size(fs, final) != size:
            return False
        if size <= FULL_CHECK_BYTES or _is_suspect(root, digest):
            return remote_digest(fs, final) == [digest]
    except OSError:  # e.g. a file removed while it was listed: treat the copy as bad and write ours
        return False
    return True


def remote_digest(fs: Any, path: str, version: int | None = CURRENT_DIGEST_VERSION) -> list[str]:
    """The digests of a stored remote file or directory under `version` (None: v2 and v1), from the remote bytes."""
    if not fs.isdir(path):
        return [_remote_sha256(fs, path)]
    entries = [(name[len(path) + 1:], _remote_sha256(fs, name), info["size"])
               for name, info in fs.find(path, detail=True).items()]
    entries.sort(key=lambda e: e[0].encode("utf-8", "surrogateescape"))
    return [manifest_digest(entries, v) for v in _versions(version)]


def local_digest(path: Path, version: int | None = CURRENT_DIGEST_VERSION) -> list[str]:
    """The digests of a stored local file or directory under `version` (None: v2 and v1), hashed once."""
    if not path.is_dir():
        return [digest_path(path, strict=False)]
    entries = directory_manifest(path, strict=False)
    return [manifest_digest(entries, v) for v in _versions(version)]


def _versions(version: int | None) -> list[int]:
    """The encodings to accept: the row's, or (None: a caller without the row) the current one, then v1.

    Accepting both weakens neither: a v1 manifest never holds the NUL that every v2 encoding starts
    with, so bytes whose v1 digest equals a v2 digest (or the reverse) would be a sha256 collision.
    """
    return [version] if version is not None else [DIGEST_V2, DIGEST_V1]


def _remote_sha256(fs: Any, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- suspect marks

def _set_suspect(root: str, digest: str, on: bool) -> None:
    """Mark (or unmark) an object a reader found corrupted, so the next writer re-hashes it in full."""
    if is_local(root):
        mark = local_root(root) / "suspect" / digest
        if on:
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.touch()
        else:
            mark.unlink(missing_ok=True)
        return
    fs, base = remote_fs(root)
    mark = f"{base}/suspect/{digest}"
    if on:
        fs.makedirs(f"{base}/suspect", exist_ok=True)
        fs.pipe_file(mark, b"")
    elif fs.exists(mark):
        fs.rm(mark)


def _is_suspect(root: str, digest: str) -> bool:
    if is_local(root):
        return (local_root(root) / "suspect" / digest).exists()
    fs, base = remote_fs(root)
    return fs.exists(f"{base}/suspect/{digest}")


# ---------------------------------------------------------------------------------------------- reads

def materialize(root: str, digest: str, cache_dir: Path, *, verify: bool = True,
                digest_version: int | None = None) -> Path:
    """A read-only local path holding the artifact's bytes, with the digest checked (fails loudly on corruption).

    `digest_version` is the row's encoding (None: either). On a remote root a cached copy that fails the
    check is fetched again once before failing.
    """
    _check_digest(digest)
    if is_local(root):
        path = local_root(root) / "objects" / digest[:2] / digest
        if not os.path.lexists(path):
            raise ArtifactError(f"artifact {digest[:12]}: bytes missing at {path}; expected them under the artifact "
                                f"root {root}", hint="is BITSMITH_ARTIFACT_ROOT the root this store was used with?")
        if verify:
            _verify_or_mark(root, path, digest, digest_version)
        return path
    path = Path(cache_dir) / digest
    if os.path.lexists(path):
        if not verify:
            return path
        try:
            verify_object(path, digest, digest_version)
            return path
        except ArtifactError as exc:
            log.warning("%s; fetching it again", exc.message)
            remove_tree(path)
    _fetch(root, digest, path)
    if verify:
        _verify_or_mark(root, path, digest, digest_version)
    return path


def _fetch(root: str, digest: str, path: Path) -> None:
    """Download the object into the cache (temp, sealed read-only, renamed; a concurrent fetch wins harmlessly)."""
    fs, base = remote_fs(root)
    remote = f"{base}/objects/{digest[:2]}/{digest}"
    if not fs.exists(remote):
        raise ArtifactError(f"artifact {digest[:12]}: bytes missing at {object_uri(root, digest)}")
    tmp = path.parent / f".{temp_name(digest[:12] + '.')}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        fs.get(remote, str(tmp), recursive=fs.isdir(remote))
        seal(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            if not os.path.lexists(path):
                raise
        else:
            if path.is_dir():
                os.chmod(path, 0o555)
    finally:
        if os.path.lexists(tmp):
            remove_tree(tmp)


def _verify_or_mark(root: str, path: Path, digest: str, version: int | None) -> None:
    try:
        verify_object(path, digest, version)
    except ArtifactError:
        _set_suspect(root, digest, True)
        if not is_local(root):
            remove_tree(path)  # never leave a bad cached copy behind
        raise


def verify_object(path: Path, digest: str, digest_version: int | None = None) -> None:
    try:
        actual = local_digest(path, digest_version)
    except (OSError, ValueError, ArtifactError) as exc:
        raise ArtifactError(f"artifact {digest[:12]} at {path}: unreadable ({exc})") from None
    _compare(path, digest, actual)


def _compare(where: Any, digest: str, actual: list[str]) -> None:
    if digest not in actual:
        raise ArtifactError(
            f"artifact {digest[:12]} at {where}: content digest is {actual[0][:12]}, expected {digest[:12]}; "
            "the stored copy is corrupted",
            hint="rerun the run that produced it with --no-cache (or import the file again), or run "
                 "`bitsmith db check --repair`")


def verify_stored(root: str, digest: str, digest_version: int | None = None) -> None:
    """Check the stored copy itself (on a remote root: hashed from the remote bytes, not the local cache)."""
    _check_digest(digest)
    if is_local(root):
        materialize(root, digest, Path(), digest_version=digest_version)
        return
    fs, base = remote_fs(root)
    remote = f"{base}/objects/{digest[:2]}/{digest}"
    if not fs.exists(remote):
        raise ArtifactError(f"artifact {digest[:12]}: bytes missing at {object_uri(root, digest)}")
    try:
        actual = remote_digest(fs, remote, digest_version)
    except OSError as exc:
        raise ArtifactError(f"artifact {digest[:12]} at {object_uri(root, digest)}: unreadable ({exc})") from None
    try:
        _compare(object_uri(root, digest), digest, actual)
    except ArtifactError:
        _set_suspect(root, digest, True)
        raise


def stored_exists(root: str, digest: str) -> bool:
    """Whether the stored copy exists (not checked)."""
    _check_digest(digest)
    if is_local(root):
        return os.path.lexists(local_root(root) / "objects" / digest[:2] / digest)
    fs, base = remote_fs(root)
    return fs.exists(f"{base}/objects/{digest[:2]}/{digest}")


def drop_object(root: str, digest: str, cache_dir: Path | None = None) -> None:
    """Remove a (bad) stored copy, and its local cache copy, so the next producer stores it afresh."""
    _check_digest(digest)
    if cache_dir is not None and os.path.lexists(Path(cache_dir) / digest):
        remove_tree(Path(cache_dir) / digest)
    if is_local(root):
        final = local_root(root) / "objects" / digest[:2] / digest
        if os.path.lexists(final):
            _drop_local(local_root(root), final)
    else:
        fs, base = remote_fs(root)
        remote = f"{base}/objects/{digest[:2]}/{digest}"
        if fs.exists(remote):
            fs.rm(remote, recursive=True)
    _set_suspect(root, digest, True)


# ---------------------------------------------------------------------------------------------- user copies

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


def _make_writable(path: Path) -> None:
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def remove_tree(path: Path) -> None:
    """Delete a file or folder, read-only ones included (gone already is fine: a concurrent cleanup)."""
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        for dirpath, _, _ in os.walk(path):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)

