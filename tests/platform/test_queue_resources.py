"""Custom resources: the spec field (validated; left out of the stored spec when empty, so spec hashes of specs
without it do not move), Ray task options, admission and waiting reasons, node declarations (no Ray needed)."""
from __future__ import annotations

import hashlib
import json

import pytest

from bitsmith.platform.errors import UsageError
from bitsmith.platform.scheduler.admission import parse_node_resources, run_needs, shown, waiting_reason
from bitsmith.platform.scheduler.ray_executor import _task_options
from bitsmith.platform.specs import SpecError, canonical_json, parse_spec, semantic_json, spec_hash


def test_a_spec_without_custom_resources_keeps_its_stored_form_and_hash() -> None:
    spec = parse_spec({"kind": "noop", "resources": {"cpus": 2}})
    stored = json.loads(canonical_json(spec))
    assert stored["resources"] == {"cpus": 2.0, "gpus": 0.0, "memory_bytes": None}  # as before the field existed
    assert spec_hash(spec) == hashlib.sha256(json.dumps(stored, sort_keys=True, separators=(",", ":")).encode()
                                             ).hexdigest()
    explicit = parse_spec({"kind": "noop", "resources": {"cpus": 2, "custom": {}}})
    assert spec_hash(explicit) == spec_hash(spec) and explicit == spec
    asks = parse_spec({"kind": "noop", "resources": {"cpus": 2, "custom": {"accel": 1}}})
    assert json.loads(canonical_json(asks))["resources"]["custom"] == {"accel": 1.0}
    assert spec_hash(asks) != spec_hash(spec)
    assert semantic_json(asks) == semantic_json(spec)  # resources stay out of the cache key
    assert parse_spec(json.loads(canonical_json(asks))) == asks  # the stored form parses back
    assert hash(asks) != hash(spec)  # frozen specs stay hashable with a dict inside


@pytest.mark.parametrize("custom, message", [
    ({"gpu": 1}, "resources.custom: 'gpu' is one of Ray's own resources (CPU, GPU, memory, object_store_memory), "
                 "not a custom one; ask for it with resources.gpus"),
    ({"CPU": 1}, "ask for it with resources.cpus"),
    ({"Memory": 1}, "ask for it with resources.memory_bytes"),
    ({"object_store_memory": 1}, "'object_store_memory' is one of Ray's own resources"),
    ({" ": 1}, "resources.custom: a resource name must be a non-empty string; got ' '"),
    ({"accel": 0}, "resources.custom: accel: expected an amount > 0; got 0.0"),
    ({"accel": -2}, "accel: expected an amount > 0; got -2.0"),
    ({"accel": 0.00001}, "accel: expected an amount in steps of 0.0001 (Ray's precision); got 1e-05"),
    ({"accel": "lots"}, "resources.custom.accel: Input should be a valid number"),
    (["accel"], "resources.custom: Input should be a valid dictionary"),
])
def test_bad_custom_resources_are_refused_naming_the_field(custom, message) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec({"kind": "noop", "resources": {"custom": custom}})
    assert message in str(refused.value)


def test_custom_resources_reach_ray_and_admission() -> None:
    spec = json.loads(canonical_json(parse_spec({"kind": "noop", "resources": {"cpus": 0.5,
                                                                               "custom": {"accel": 1}}})))

    class Run:
        pass

    run = Run()
    run.spec = spec
    assert _task_options(run)["resources"] == {"accel": 1.0}
    assert "resources" not in _task_options(type("R", (), {"spec": {"resources": {"cpus": 1}}})())
    needs = run_needs(spec)
    assert needs == {"CPU": 0.5, "accel": 1.0}
    total = {"CPU": 2.0, "accel": 1.0, "node:10.0.0.1": 1.0, "memory": 2.0**33}
    assert waiting_reason(needs, {**total, "accel": 0.0}, total) == "needs 1 accel, 0 free"
    assert waiting_reason(needs, total, total) is None
    assert waiting_reason({"tpu": 2.0}, total, total) == "needs 2 tpu, the cluster has none"
    assert waiting_reason({"accel": 2.0}, total, total) == "needs 2 accel, the cluster has 1"
    assert waiting_reason({"GPU": 1.0}, total, total) == "needs 1 GPU, the cluster has none"
    assert waiting_reason({"node:10.0.0.1": 0.01}, total, total) is None  # Ray's node markers can be asked for
    assert shown(total) == {"CPU": 2.0, "accel": 1.0, "memory": 2.0**33}


def test_node_resources_are_json_whole_amounts() -> None:
    assert parse_node_resources('{"accel": 1, "tpu": 4}', "--resources") == {"accel": 1.0, "tpu": 4.0}
    assert parse_node_resources("", "BITSMITH_RAY_RESOURCES") is None
    for raw, message in [("accel=1", "--resources: not JSON"), ("[1]", "--resources: expected a JSON object"),
                         ('{"accel": 1.5}', "--resources.accel: expected a whole amount >= 1"),
                         ('{"accel": 0}', "--resources.accel: expected a whole amount >= 1"),
                         ('{"accel": true}', "--resources.accel: expected a whole amount"),
                         ('{"accel": Infinity}', "--resources.accel: expected a whole amount"),
                         ('{"accel": NaN}', "--resources.accel: expected a whole amount"),
                         ('{"GPU": 1}', "--resources: 'GPU' is one of Ray's own resources"),
                         ('{"": 1}', "--resources: a resource name must be a non-empty string")]:
        with pytest.raises(UsageError) as refused:
            parse_node_resources(raw, "--resources")
        assert message in refused.value.message and refused.value.exit_code == 2
