"""Store a local file or directory as an artifact: bytes under the root, a row in the store."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import store
from .artifacts import put_object
from .config import Settings
from .digests import read_artifact_meta
from .store.records import ArtifactRecord


def register_path(db: Any, settings: Settings, path: Path, *, kind: str, name: str | None = None,
                  metadata: dict[str, Any] | None = None, producer_run_id: str | None = None,
                  move: bool = False) -> ArtifactRecord:
    """Content-address `path` (atomic, deduplicated) and record it; `artifact.json` fields become metadata."""
    meta = {**read_artifact_meta(path), **(metadata or {})}
    obj = put_object(settings.artifact_root, path, move=move)
    return store.register_artifact(db, digest=obj.digest, kind=kind, name=name, uri=obj.uri,
                                   size_bytes=obj.size_bytes, is_dir=obj.is_dir, metadata=meta,
                                   producer_run_id=producer_run_id)
