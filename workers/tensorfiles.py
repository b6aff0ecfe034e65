"""Write safetensors files byte-for-byte reproducibly.

safetensors keeps `__metadata__` in a hash map whose iteration order changes from process to process,
so two runs writing the same tensors and metadata can produce different bytes (and different artifact
digests). `save_tensors` writes the file, then rewrites its JSON header with sorted keys.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file


def canonicalize_header(path: str | Path) -> None:
    """Rewrite a safetensors header as sorted, compact JSON (padded to 8 bytes); tensor bytes are untouched."""
    path = Path(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.write(data)
    os.replace(tmp, path)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, with a deterministic header."""
    save_file(tensors, str(path), metadata=metadata)
    canonicalize_header(path)
