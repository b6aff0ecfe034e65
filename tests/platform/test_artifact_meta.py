"""`artifact.json` has one writer, beside its reader, and what it writes reads back."""
from __future__ import annotations

import re
from pathlib import Path

from bitsmith.platform.digests import ARTIFACT_META_FILE, read_artifact_meta, write_artifact_meta

ROOT = Path(__file__).resolve().parents[2]


def test_what_the_writer_writes_the_reader_reads(tmp_path: Path) -> None:
    meta = {"kind": "model", "source": {"gguf": "m.gguf"}, "bits": 3}
    written = write_artifact_meta(tmp_path, meta)
    assert written == tmp_path / ARTIFACT_META_FILE
    assert written.read_text() == '{\n  "bits": 3,\n  "kind": "model",\n  "source": {\n    "gguf": "m.gguf"\n  }\n}\n'
    assert read_artifact_meta(tmp_path) == meta


def test_no_other_module_writes_artifact_json() -> None:
    by_hand = re.compile(r"""(ARTIFACT_META_FILE|["']artifact\.json["'])\)\.(write_text|open)""")
    offenders = [path for folder in ("platform", "workers") for path in (ROOT / folder).rglob("*.py")
                 if by_hand.search(path.read_text())]
    assert offenders == []
