"""The eval spec: defaults, clear validation errors, and the evaluator registry kept equal to its tags."""
from __future__ import annotations

import pytest

from bitsmith.platform.errors import SpecError
from bitsmith.platform.specs import parse_spec
from bitsmith.platform.specs.eval import TASK_TYPES, EvalSpec, metric_prefix

BASE = {"kind": "eval", "inputs": {"model": "m", "data": "d"}}


def spec(**fields) -> EvalSpec:
    return parse_spec({**BASE, **fields})  # type: ignore[return-value]


def test_defaults_and_metric_prefixes() -> None:
    s = spec(tasks=[{"type": "token_ppl"}, {"type": "word_ppl"}, {"type": "choice", "file": "x.jsonl"},
                    {"type": "generation"}, {"type": "token_ppl", "split": "calibration"}])
    assert s.backend == "native" and s.compute.dtype == "fp32" and s.batch_size == 8
    assert [metric_prefix(t) for t in s.tasks] == ["test/", "test/", "mc/", "gen/", "calibration/"]
    assert s.input_refs() == {"model": "m", "data": "d", "task_file.2": "x.jsonl"}  # a choice task's file is an input


def test_list_of_datasets_becomes_numbered_inputs() -> None:
    s = parse_spec({"kind": "eval", "inputs": {"model": "m", "data": ["a", "b"], "reference": "r"},
                    "tasks": [{"type": "kl"}, {"type": "token_ppl", "data_index": 1}]})
    assert s.input_refs() == {"model": "m", "data.0": "a", "data.1": "b", "reference": "r"}
    assert metric_prefix(s.tasks[0]) == "" and metric_prefix(s.tasks[1]) == "data1.test/"


@pytest.mark.parametrize("fields, message", [
    ({"tasks": []}, "tasks"),
    ({"tasks": [{"type": "bleu"}]}, "tasks"),
    ({"tasks": [{"type": "token_ppl", "seq_len": 1}]}, "seq_len"),
    ({"tasks": [{"type": "token_ppl", "chunks": 3}]}, "unknown field"),
    ({"tasks": [{"type": "kl"}]}, "inputs.reference"),
    ({"tasks": [{"type": "generation", "n_samples": 2, "k": [4], "temperature": 1.0}]}, "n_samples"),
    ({"tasks": [{"type": "generation", "n_samples": 4, "k": [1, 4]}]}, "temperature"),
    ({"tasks": [{"type": "generation", "extractor": "regex"}]}, "extractor"),
    ({"tasks": [{"type": "token_ppl", "data_index": 1}]}, "data_index 1"),
    ({"tasks": [{"type": "token_ppl"}], "backend": "lm_eval"}, "backend native"),
    ({"tasks": [{"type": "token_ppl"}, {"type": "token_ppl"}]}, "distinct `name`"),
    ({"tasks": [{"type": "token_ppl"}], "compute": {"dtype": "bf16"}, "deterministic": True}, "fp32"),
    ({"tasks": [{"type": "token_ppl"}], "compute": {"dtype": "int8"}}, "compute.dtype"),
])
def test_invalid_specs_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec(**fields)


def test_choice_from_file_needs_no_dataset() -> None:
    s = parse_spec({"kind": "eval", "inputs": {"model": "m"}, "tasks": [{"type": "choice", "file": "mc.jsonl"}]})
    assert s.inputs.data is None and s.input_refs() == {"model": "m", "task_file.0": "mc.jsonl"}


def test_spec_is_frozen() -> None:
    s = spec(tasks=[{"type": "token_ppl"}])
    with pytest.raises(Exception):
        s.batch_size = 2  # type: ignore[misc]


def test_registry_keys_equal_spec_tags() -> None:
    from bitsmith.workers.evaluators import EVALUATORS, get_evaluator

    get_evaluator("token_ppl")  # loads every family
    assert set(EVALUATORS) == set(TASK_TYPES)
    with pytest.raises(SpecError, match="expected one of"):
        get_evaluator("bleu")
