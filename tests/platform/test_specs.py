"""Typed specs: loading, overrides, canonical form, hashes, and errors that name the field."""
from __future__ import annotations

import json

import pytest

from bitsmith.platform.errors import SpecError
from bitsmith.platform.specs import (JOB_KINDS, apply_overrides, canonical_json, load_spec, parse_spec,
                                     semantic_json, spec_hash)


def test_yaml_and_json_give_the_same_canonical_spec(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("kind: noop\nmetrics: 3\nname: x\n")
    (tmp_path / "b.json").write_text(json.dumps({"kind": "noop", "metrics": 3, "name": "x"}))
    a, b = load_spec(tmp_path / "a.yaml"), load_spec(tmp_path / "b.json")
    assert canonical_json(a) == canonical_json(b)
    assert spec_hash(a) == spec_hash(b)
    assert json.loads(canonical_json(a))["resources"]["cpus"] == 1.0  # defaults are filled in


def test_overrides_set_nested_fields_and_parse_scalars() -> None:
    spec = load_spec(base={"kind": "train", "inputs": {"corpus": "c"}},
                     overrides=["optim.lr=0.01", "steps=7", "compute.dtype=bf16", "tags=[a, b]"])
    assert spec.optim.lr == 0.01 and spec.steps == 7 and spec.compute.dtype == "bf16" and spec.tags == ("a", "b")


def test_semantic_json_ignores_name_tags_resources() -> None:
    a = parse_spec({"kind": "noop", "name": "a", "tags": ["x"], "resources": {"cpus": 2}})
    b = parse_spec({"kind": "noop", "name": "b"})
    assert semantic_json(a) == semantic_json(b) and spec_hash(a) != spec_hash(b)
    assert semantic_json(a) != semantic_json(parse_spec({"kind": "noop", "seed": 1}))


@pytest.mark.parametrize("data, field", [
    ({"kind": "nope"}, "kind"),
    ({"metrics": 1}, "kind"),
    ({"kind": "noop", "metrics": "many"}, "metrics"),
    ({"kind": "noop", "metricz": 1}, "metricz"),
    ({"kind": "noop", "resources": {"cpus": -1}}, "resources.cpus"),
    ({"kind": "train", "inputs": {"corpus": "c"}, "optim": {"lr": "fast"}}, "optim.lr"),
    ({"kind": "train", "inputs": {"corpus": "c"}, "mode": {"type": "rlhf"}}, "mode"),
])
def test_invalid_specs_name_the_field(data, field) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(data, source="s.yaml")
    assert f"s.yaml: {field}" in str(err.value)
    assert err.value.exit_code == 2


def test_bad_override_and_bad_file(tmp_path) -> None:
    with pytest.raises(SpecError, match="expected KEY=VALUE"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(SpecError, match="is a int; expected a mapping"):
        apply_overrides({"a": 1}, ["a.b=2"])
    (tmp_path / "bad.yaml").write_text("kind: [unclosed")
    with pytest.raises(SpecError, match="bad.yaml: not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "missing.yaml")


def test_every_kind_has_a_spec() -> None:
    for kind in JOB_KINDS:
        base = {"kind": kind}
        if kind == "train":
            base["inputs"] = {"corpus": "c"}
        try:
            spec = parse_spec(base)
        except SpecError:
            continue  # kinds with required fields; their own tests cover them
        assert spec.kind == kind


def test_every_spec_kind_has_a_worker_entry() -> None:
    from bitsmith.platform.jobs import WORKER_MODULES

    assert set(WORKER_MODULES) == set(JOB_KINDS)
