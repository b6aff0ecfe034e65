"""Import user data as dataset artifacts: plain text, JSONL records, or a `datasets.save_to_disk` folder.

The dataset's `artifact.json` (hashed with the data) describes the source by file names only, never by
the folder it was imported from: the same bytes imported from two folders are one artifact.
"""
from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from bitsmith.platform.digests import check_entry_type
from bitsmith.platform.errors import DataError

from .corpus import clean_text
from .datasets import SPLITS, assign_split, check_record, read_text_file, split_documents, write_dataset


def _input_files(path: str | Path, suffix: str) -> list[Path]:
    """The file itself, or the `*suffix` files under a folder (sorted, recursive).

    Inside a folder, symlinked folders and `*suffix` entries that are symlinks, FIFOs or devices are
    refused by their `lstat` type before anything is opened (never followed, never silently skipped).
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = []
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames:
                check_entry_type(Path(dirpath) / name)
            files += [Path(dirpath) / name for name in filenames
                      if name.endswith(suffix) and stat.S_ISREG(check_entry_type(Path(dirpath) / name).st_mode)]
        files.sort()
        if files:
            return files
        raise DataError(f"{path}: no *{suffix} files in this folder; expected {suffix} files")
    if os.path.lexists(path):
        check_entry_type(path)
    raise DataError(f"{path}: no such file or folder")


def import_text(path_or_dir: str | Path, dest_dir: str | Path,
                split_on: Literal["paragraph", "file"] = "paragraph") -> Path:
    """A text dataset from a UTF-8 text file or a folder of `.txt` files (sorted, recursive).

    Documents are blank-line-separated paragraphs (or whole files with `split_on="file"`), with
    whitespace normalised; they go to splits by a hash of their content.
    """
    files = _input_files(path_or_dir, ".txt")
    docs: list[str] = []
    for file in files:
        text = clean_text(read_text_file(file))
        parts = [text] if split_on == "file" else text.split("\n\n")
        docs.extend(p.strip() for p in parts if p.strip())
    if not docs:
        raise DataError(f"{path_or_dir}: no text found; expected non-empty UTF-8 text")
    source = {"name": "text", "files": [f.name for f in files], "split_on": split_on}
    return write_dataset(dest_dir, "text", split_documents(docs), source)


def _format_of(record: dict[str, Any], where: str) -> str:
    if "text" in record:
        return "text"
    if "prompt" in record:
        return "prompts"
    raise DataError(f"{where}: record has neither 'text' nor 'prompt'; expected {{\"text\": ...}} or "
                    "{\"prompt\": ..., \"answer\": ...}")


def _split_records(records: Iterable[tuple[dict[str, Any], str]], fmt: str | None,
                   ) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """Check (record, where) pairs share one format and group them by a hash of their content."""
    splits: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for record, where in records:
        if not isinstance(record, dict):
            raise DataError(f"{where}: record is a {type(record).__name__}; expected a JSON object")
        fmt = fmt or _format_of(record, where)
        check_record(record, fmt, where)
        key = record["text"] if fmt == "text" else record["prompt"]  # equal prompts share a split
        splits[assign_split(key)].append(record)
    if fmt is None:
        raise DataError("import: no records found; expected at least one")
    return fmt, splits


def import_jsonl(path_or_dir: str | Path, dest_dir: str | Path) -> Path:
    """A dataset from a JSONL file or a folder of `.jsonl` files: `text` or `prompt`/`answer` records."""
    files = _input_files(path_or_dir, ".jsonl")

    def records() -> Iterable[tuple[dict[str, Any], str]]:
        for file in files:
            for number, line in enumerate(read_text_file(file).splitlines(), start=1):
                if line.strip():
                    try:
                        yield json.loads(line), f"{file}:{number}"
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{file}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                        "expected one JSON object per line") from None

    fmt, splits = _split_records(records(), None)
    source = {"name": "jsonl", "files": [f.name for f in files]}
    return write_dataset(dest_dir, fmt, splits, source)


def import_hf(hf_dir: str | Path, dest_dir: str | Path) -> Path:
    """A dataset from a Hugging Face `datasets.save_to_disk` folder (all its splits, re-split by hash)."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{hf_dir}: importing a Hugging Face dataset needs the `datasets` package",
                        hint="pip install datasets") from None
    try:
        loaded = datasets.load_from_disk(str(hf_dir))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{hf_dir}: not a `datasets.save_to_disk` folder ({exc})") from None
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("data", loaded)]

    def records() -> Iterable[tuple[dict[str, Any], str]]:
        for name, part in parts:
            for i, row in enumerate(part):
                yield dict(row), f"{hf_dir} [{name}] row {i}"

    fmt, splits = _split_records(records(), None)
    return write_dataset(dest_dir, fmt, splits, {"name": "hf"})
