"""Safetensors files are written byte-for-byte reproducibly, whatever order the metadata comes in."""
from __future__ import annotations

import subprocess
import sys

import torch
from safetensors.torch import load_file
from safetensors import safe_open

from bitsmith.platform.digests import sha256_file
from bitsmith.workers.tensorfiles import save_tensors

WRITE = """
import sys, torch
from bitsmith.workers.tensorfiles import save_tensors
torch.manual_seed(0)
meta = {k: k * 3 for k in ("format", "bitsmith_format", "bitsmith_aliases", "version", "bits")}
save_tensors({"b": torch.randn(3, 5), "a": torch.arange(7, dtype=torch.int32)}, sys.argv[1], metadata=meta)
"""


def test_same_tensors_give_the_same_bytes_in_different_processes(tmp_path) -> None:
    digests = set()
    for i in range(4):  # hash-map order differs between processes: each write is a fresh interpreter
        path = tmp_path / f"t{i}.safetensors"
        subprocess.run([sys.executable, "-c", WRITE, str(path)], check=True)
        digests.add(sha256_file(path))
    assert len(digests) == 1


def test_canonical_file_still_loads_with_its_metadata(tmp_path) -> None:
    tensors = {"w": torch.randn(4, 4), "codes": torch.randint(0, 7, (9,), dtype=torch.int32)}
    path = tmp_path / "x.safetensors"
    save_tensors(tensors, path, metadata={"format": "pt", "note": "hello"})
    loaded = load_file(str(path))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt", "note": "hello"}
