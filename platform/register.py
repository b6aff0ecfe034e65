"""Store a local file or directory as an artifact: bytes under the root, a row in the store."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import store
from .artifacts import put_object
from .config import Settings
from .digests import read_artifact_meta
from .errors import DataError
from .specs.strict import StrictInputError, check_storable
from .store.records import ArtifactRecord
from .store.schema import artifacts_t


def register_path(db: Any, settings: Settings, path: Path, *, kind: str, name: str | None = None,
                  metadata: dict[str, Any] | None = None, producer_run_id: str | None = None,
                  move: bool = False) -> ArtifactRecord:
    """Content-address `path` (atomic, deduplicated) and record it; `artifact.json` fields become metadata."""
    meta = {**read_artifact_meta(path), **(metadata or {})}
    check_registrable(path, kind=kind, name=name, metadata=meta)
    obj = put_object(settings.artifact_root, path, move=move)
    return store.register_artifact(db, digest=obj.digest, kind=kind, name=name, uri=obj.uri,
                                   size_bytes=obj.size_bytes, is_dir=obj.is_dir, metadata=meta,
                                   producer_run_id=producer_run_id, digest_version=obj.digest_version)


def check_registrable(path: Path, *, kind: str, name: str | None, metadata: dict[str, Any]) -> None:
    """Refuse, before any byte is stored, a name, kind or metadata value the store's columns cannot hold."""
    for field, value in (("name", name), ("kind", kind)):
        limit = artifacts_t.c[field].type.length
        if value is not None and len(value) > limit:
            raise DataError(f"{path}: artifact {field} {value[:40]!r}... has {len(value)} characters; "
                            f"expected at most {limit}")
    try:
        check_storable({"name": name, "kind": kind}, "artifact")
        check_storable(metadata, "metadata")
    except StrictInputError as exc:
        raise DataError(f"{path}: {exc}") from None
