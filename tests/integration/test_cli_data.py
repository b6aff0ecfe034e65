"""Datasets and models through the real CLI: built-in corpus, imports, arithmetic, bad files named."""
from __future__ import annotations

import json



def test_builtin_corpus_and_arithmetic_are_content_addressed(cli) -> None:
    a = cli("data", "builtin", "pydoc", "--json").json()
    b = cli("data", "builtin", "pydoc", "--json").json()
    assert a["digest"] == b["digest"] and a["name"] == "corpus-pydoc"  # deterministic: same bytes, one object
    assert set(a["metadata"]["splits"]) == {"train", "calibration", "test"}
    arith = cli("data", "arithmetic", "--n-train", "50", "--n-test", "10", "--n-calibration", "5",
                "--max-operand", "20", "--seed", "3", "--json").json()
    assert arith["metadata"]["format"] == "prompts"
    listed = {x["name"] for x in cli("artifacts", "list", "--kind", "dataset", "--json").json()}
    assert listed == {"corpus-pydoc", "arithmetic"}
    found = cli("artifacts", "find", "--kind", "dataset", "--where", "meta.format==prompts", "--json").json()
    assert [x["digest"] for x in found] == [arith["digest"]]


def test_import_text_and_jsonl_and_errors_name_file_and_line(cli, tmp_path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(12):
        (folder / f"doc{i}.txt").write_text(f"Document number {i}.\n\nIt has two paragraphs, the {i}th.\n")
    res = cli("data", "import", folder, "--kind", "text", "--name", "mytexts", "--json").json()
    assert res["kind"] == "dataset" and res["name"] == "mytexts"
    good = tmp_path / "qa.jsonl"
    good.write_text("".join(json.dumps({"prompt": f"Q{i}?", "answer": str(i)}) + "\n" for i in range(20)))
    assert cli("data", "import", good, "--kind", "jsonl", "--json").json()["metadata"]["format"] == "prompts"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": \n')
    res = cli("data", "import", bad, "--kind", "jsonl", check=False)
    assert res.code == 2 and "bad.jsonl:2" in res.err
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"prompt": "a"}\n')
    res = cli("data", "import", missing, "--kind", "jsonl", check=False)
    assert res.code == 2 and "answer" in res.err
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02binary\xff\xfe")
    res = cli("data", "import", binary, "--kind", "text", check=False)
    assert res.code == 2 and "blob.txt" in res.err
    assert len(cli("artifacts", "list", "--json").json()) == 2  # failed imports wrote nothing


def test_models_import_registers_safetensors_dirs_and_refuses_pickles(cli, tmp_path, trained_lm) -> None:
    res = cli("models", "import", trained_lm, "--name", "tiny", "--json").json()
    assert res["kind"] == "model" and res["metadata"]["has_tokenizer"]
    assert res["metadata"]["architecture"] == "LlamaForCausalLM"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"not really")
    out = cli("models", "import", pickled, check=False)
    assert out.code == 2 and "safetensors" in out.err and "pytorch_model.bin" in out.err
