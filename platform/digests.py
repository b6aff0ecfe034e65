"""Content digests of files and directories, versioned so that old digests stay checkable.

A file's digest is the sha256 of its bytes (every version; `sha256sum` agrees).

A directory's digest, version 2 (`DIGEST_V2`, what every new directory gets), is the sha256 of
`DIR_HEADER` followed by one record per regular file under it, sorted by the UTF-8 bytes of its
relative posix path: `u32be(len(name)) + name + sha256(bytes) (32 raw bytes) + u64be(size)`. Every
record is length-prefixed or fixed-width, so the byte string decodes back to exactly one list of
(path, content hash, size): two directories with different files, names or bytes get different
digests unless sha256 collides. Empty folders are not content (they are neither hashed nor
guaranteed to survive a remote root).

Files and directories share one digest space, kept apart by the header: a directory's hashed bytes
always start with `DIR_HEADER` (which holds a NUL), and a file whose bytes start with it is refused
(`check_file_storable`), so a file can never take a directory's digest. Version 1 (`DIGEST_V1`, rows
written before migration 0003) hashed `"path\\tsha256\\tsize\\n"` lines, which a tab or newline in a
name, or a file holding such lines, could forge; it is only used to verify those old rows. A v1
manifest never holds a NUL, so no v1 directory digest equals a v2 one either.

Stored names must be valid UTF-8 without control characters, and only regular files and folders can
be stored: symlinks, FIFOs, sockets and devices are refused by their `lstat` type, before anything
is opened (opening a FIFO would block).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import DataError, UnstorableError
from .specs.strict import StrictInputError, load_json_file

CHUNK_BYTES = 1 << 20
ARTIFACT_META_FILE = "artifact.json"  # optional self-description inside a directory artifact
DIGEST_V1 = 1
DIGEST_V2 = 2
CURRENT_DIGEST_VERSION = DIGEST_V2
DIR_HEADER = b"bitsmith-dir-v2\0"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def shown(path: str | Path) -> str:
    """A path as printable text: control characters and undecodable bytes escaped."""
    text = os.fspath(path)
    return text if text.isprintable() else ascii(text)[1:-1]


def check_name(full: Path, name: str) -> None:
    """Refuse a stored name that is not valid UTF-8 or holds a control character."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnstorableError(f"{shown(full)}: file name is not valid UTF-8; expected UTF-8 names in an "
                              "artifact (rename the file)") from None
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise UnstorableError(f"{shown(full)}: file name contains a control character; expected printable "
                              "names in an artifact (rename the file)")


def check_entry_type(full: Path) -> os.stat_result:
    """The `lstat` of `full` if it is a regular file or folder; anything else is refused unopened."""
    st = os.lstat(full)
    if stat.S_ISLNK(st.st_mode):
        raise UnstorableError(f"{shown(full)}: symlinks cannot be stored in an artifact; copy the file instead")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        what = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise UnstorableError(f"{shown(full)}: is {what}; expected only regular files and folders in an artifact")
    return st


def check_file_storable(path: str | Path) -> None:
    """Refuse a file whose bytes start with `DIR_HEADER` (it would share a directory's digest space)."""
    with open(path, "rb") as f:
        if f.read(len(DIR_HEADER)) == DIR_HEADER:
            raise UnstorableError(f"{shown(path)}: starts with {DIR_HEADER!r}, reserved for directory digests; "
                                  "expected any other file content (wrap it in a folder)")


def directory_manifest(root: str | Path, *, strict: bool = True) -> list[tuple[str, str, int]]:
    """(relative posix path, sha256, size) of every regular file under `root`, sorted by path bytes.

    Every entry's type is checked with `lstat` before it is opened (see the module docstring); with
    `strict` names are checked too (off only to re-verify v1 objects stored before the check).
    """
    root = Path(root)
    entries: list[tuple[str, str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = Path(dirpath) / name
            if strict:
                check_name(full, name)
            st = check_entry_type(full)
            if stat.S_ISREG(st.st_mode):
                entries.append((full.relative_to(root).as_posix(), sha256_file(full), st.st_size))
    entries.sort(key=lambda e: e[0].encode("utf-8", "surrogateescape"))
    return entries


def manifest_digest(entries: Iterable[tuple[str, str, int]], version: int = CURRENT_DIGEST_VERSION) -> str:
    """The directory digest of sorted manifest entries under encoding `version` (see the module docstring)."""
    h = hashlib.sha256()
    if version == DIGEST_V1:
        for rel, digest, size in entries:
            h.update(f"{rel}\t{digest}\t{size}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()
    if version != DIGEST_V2:
        raise ValueError(f"digest version {version!r}; expected {DIGEST_V1} or {DIGEST_V2}")
    h.update(DIR_HEADER)
    for rel, digest, size in entries:
        name = rel.encode("utf-8", "surrogateescape")
        h.update(struct.pack(">I", len(name)) + name + bytes.fromhex(digest) + struct.pack(">Q", size))
    return h.hexdigest()


def digest_path(path: str | Path, version: int = CURRENT_DIGEST_VERSION, *, strict: bool = True) -> str:
    """Digest of a file or directory under encoding `version` (files hash the same in every version)."""
    path = Path(path)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        return manifest_digest(directory_manifest(path, strict=strict), version)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        check_entry_type(path)  # FIFO, socket, device: refused without opening
    if strict:
        check_file_storable(path)
    return sha256_file(path)


def digest_and_size(path: str | Path) -> tuple[str, int]:
    """(current-version digest, total bytes) of a file or directory to be stored, in one pass."""
    path = Path(path)
    if path.is_dir():
        entries = directory_manifest(path)
        return manifest_digest(entries), sum(size for _, _, size in entries)
    return digest_path(path), path.stat().st_size


def write_artifact_meta(directory: str | Path, meta: dict[str, Any]) -> Path:
    """Write `meta` as the `artifact.json` of `directory` (sorted keys, 2-space indent, trailing newline)."""
    meta_file = Path(directory) / ARTIFACT_META_FILE
    meta_file.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta_file


def read_artifact_meta(path: str | Path) -> dict[str, Any]:
    """The `artifact.json` self-description of a directory artifact, or {}."""
    meta_file = Path(path) / ARTIFACT_META_FILE
    if Path(path).is_dir() and meta_file.is_file():
        try:
            return load_json_file(meta_file)
        except StrictInputError as exc:
            raise DataError(str(exc)) from None
    return {}
