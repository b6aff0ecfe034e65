"""Read and write dataset artifacts: a directory of one JSONL file per split plus `artifact.json`.

Layout (a contract other job kinds rely on)::

    artifact.json   {"kind": "dataset", "format": "text" | "prompts", "source": {...},
                     "splits": {"train": {"file": "train.jsonl", "sha256": ..., "records": N},
                                "calibration": {...}, "test": {...}}}
    train.jsonl     one record per line: {"text": ...} or {"prompt": ..., "answer": ...}
    calibration.jsonl, test.jsonl

A split's `file` must name a file inside the dataset directory, and its bytes must hash to the recorded
`sha256`: `split_file` checks both each time a split is read (the metadata is the artifact's own, so it may
not point anywhere the artifact's digest does not cover). `calibration` doubles as the validation split.
Documents are assigned to splits by a hash of their content (`assign_split`), never by position, so
adding documents never moves existing ones.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bitsmith.platform.digests import ARTIFACT_META_FILE, sha256_file, write_artifact_meta
from bitsmith.platform.errors import DataError

SPLITS: tuple[str, ...] = ("train", "calibration", "test")
FORMATS: dict[str, tuple[str, ...]] = {"text": ("text",), "prompts": ("prompt", "answer")}
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.9, "calibration": 0.05, "test": 0.05}


def assign_split(content: str, fractions: dict[str, float] = DEFAULT_FRACTIONS) -> str:
    """The split a document belongs to, from a hash of its content (stable, order-independent)."""
    bucket = int.from_bytes(hashlib.sha256(content.encode("utf-8")).digest()[:8], "big") / 2**64
    total = sum(fractions.values())
    edge = 0.0
    for split in SPLITS:
        edge += fractions.get(split, 0.0) / total
        if bucket < edge:
            return split
    return SPLITS[0]  # rounding at the top edge


def split_documents(texts: Iterable[str], fractions: dict[str, float] = DEFAULT_FRACTIONS,
                    ) -> dict[str, list[dict[str, Any]]]:
    """`{"text": ...}` records of unique documents, grouped by `assign_split` (input order kept)."""
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    seen: set[str] = set()
    for text in texts:
        if text in seen:
            continue
        seen.add(text)
        splits[assign_split(text, fractions)].append({"text": text})
    return splits


def check_record(record: Any, fmt: str, where: str) -> dict[str, Any]:
    """Raise DataError (naming `where`) unless `record` is a mapping with the format's string fields."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: record is a {type(record).__name__}; expected a JSON object "
                        f"with {', '.join(FORMATS[fmt])}")
    for key in FORMATS[fmt]:
        if key not in record:
            raise DataError(f"{where}: missing field {key!r}; expected a {fmt!r} record with "
                            f"{', '.join(repr(k) for k in FORMATS[fmt])}")
        if not isinstance(record[key], str):
            raise DataError(f"{where}: field {key!r} is a {type(record[key]).__name__}; expected a string")
    return record


def read_text_file(path: str | Path) -> str:
    """A UTF-8 text file's content; binary files (NUL bytes, invalid UTF-8) raise DataError."""
    path = Path(path)
    data = path.read_bytes()
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise DataError(f"{path}:{line}: NUL byte, this looks like a binary file; expected UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte offset {exc.start}); expected UTF-8 text") from None


def read_jsonl(path: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Records of a JSONL file; a bad line raises DataError naming the file and line number.

    With `fmt` ("text" or "prompts") each record must carry that format's string fields.
    Blank lines are skipped.
    """
    path = Path(path)
    records = []
    for number, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); "
                            "expected one JSON object per line") from None
        records.append(check_record(record, fmt, where) if fmt else record)
    return records


def write_dataset(dest_dir: str | Path, format: str, splits: dict[str, list[dict[str, Any]]],
                  source: dict[str, Any], **extra: Any) -> Path:
    """Write a dataset artifact at `dest_dir` atomically (built in a temp dir, then renamed).

    `splits` maps each of `train`, `calibration`, `test` to its records (missing splits are written
    empty). `extra` keys are added to `artifact.json`. `dest_dir` must not exist (or be empty).
    """
    dest = Path(dest_dir)
    if format not in FORMATS:
        raise DataError(f"write_dataset: format {format!r}; expected one of {', '.join(FORMATS)}")
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise DataError(f"write_dataset: unknown split(s) {sorted(unknown)}; expected {', '.join(SPLITS)}")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DataError(f"{dest}: already exists; expected a new path for the dataset")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        meta_splits = {}
        for name in SPLITS:
            records = splits.get(name, [])
            file = tmp / f"{name}.jsonl"
            with open(file, "w", encoding="utf-8", newline="\n") as f:
                for i, record in enumerate(records):
                    check_record(record, format, f"write_dataset: split {name!r} record {i}")
                    f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
            meta_splits[name] = {"file": file.name, "sha256": sha256_file(file), "records": len(records)}
        meta = {"kind": "dataset", "format": format, "source": source, "splits": meta_splits, **extra}
        write_artifact_meta(tmp, meta)
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def dataset_info(dataset_dir: str | Path) -> dict[str, Any]:
    """The validated `artifact.json` of a dataset directory."""
    path = Path(dataset_dir) / ARTIFACT_META_FILE
    meta = _read_meta(Path(dataset_dir))
    if meta.get("kind") != "dataset":
        raise DataError(f"{path}: kind is {meta.get('kind')!r}; expected 'dataset'")
    if meta.get("format") not in FORMATS:
        raise DataError(f"{path}: format is {meta.get('format')!r}; expected one of {', '.join(FORMATS)}")
    splits = meta.get("splits")
    if not isinstance(splits, dict) or any(not isinstance(splits.get(s), dict) or "file" not in splits[s]
                                           for s in SPLITS):
        raise DataError(f"{path}: splits must map each of {', '.join(SPLITS)} to {{'file': ...}}")
    return meta


def split_file(dataset_dir: str | Path, split: str, meta: dict[str, Any] | None = None) -> Path:
    """The verified file of `split`: inside `dataset_dir` (no absolute path, `..` or link out of it) and
    hashing to the `sha256` that `artifact.json` records for it; anything else raises DataError naming it."""
    root = Path(dataset_dir)
    meta = _read_meta(root) if meta is None else meta
    entry = (meta.get("splits") or {}).get(split) if isinstance(meta.get("splits"), dict) else None
    where = f"{root / ARTIFACT_META_FILE}: splits.{split}"
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"]:
        raise DataError(f"{where}: missing or not a mapping with a `file`; expected {{'file': NAME, 'sha256': HEX}}")
    name = entry["file"]
    path = root / name
    if Path(name).is_absolute() or ".." in Path(name).parts or not _inside(path, root):
        raise DataError(f"{where}.file {name!r}: outside the dataset artifact; expected a file name inside it")
    if not path.is_file():
        raise DataError(f"{where}.file {name!r}: no such file in the dataset artifact; expected a JSONL file")
    recorded = entry.get("sha256")
    if not isinstance(recorded, str):
        raise DataError(f"{where}.sha256: missing; expected the sha256 of {name!r} recorded when it was built")
    actual = sha256_file(path)
    if actual != recorded.lower():
        raise DataError(f"{where}.file {name!r}: bytes hash to {actual[:16]}..., but artifact.json records "
                        f"{recorded[:16]}...; expected the file the dataset was built with")
    return path


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _read_meta(root: Path) -> dict[str, Any]:
    path = root / ARTIFACT_META_FILE
    if not path.is_file():
        raise DataError(f"{root}: no {ARTIFACT_META_FILE}; expected a dataset artifact directory "
                        "(build one with the data importers or the built-in corpus)")
    try:
        meta = json.loads(read_text_file(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: top level is {type(meta).__name__}; expected a JSON object")
    return meta


def read_split(dataset_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """Records of one split (`train`, `calibration` or `test`) from its verified file, validated against the format."""
    if split not in SPLITS:
        raise DataError(f"read_split: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    meta = dataset_info(dataset_dir)
    return read_jsonl(split_file(dataset_dir, split, meta), meta["format"])


def read_texts(dataset_dir: str | Path, split: str) -> list[str]:
    """Plain texts of a split: `text` records as is, `prompts` records as "PROMPT ANSWER"."""
    fmt = dataset_info(dataset_dir)["format"]
    records = read_split(dataset_dir, split)
    if fmt == "text":
        return [r["text"] for r in records]
    return [f"{r['prompt']} {r['answer']}" for r in records]
