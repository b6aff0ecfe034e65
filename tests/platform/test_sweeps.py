"""Sweep expansion: grid, zip and seeded random strategies, constraints, child validation, Pareto front."""
from __future__ import annotations

import pytest

from bitsmith.platform.errors import SpecError
from bitsmith.platform.sweeps import _dominates, check_constraint, child_specs, expand, load_sweep_spec

BASE = {"kind": "noop", "payload": "x"}


def sweep(**kw):
    return load_sweep_spec({"kind": "sweep", "base": BASE, **kw})


def test_grid_zip_and_constraints() -> None:
    grid = sweep(parameters={"seed": [0, 1, 2], "metrics": [1, 5]}, constraints=["not (seed == 2 and metrics > 1)"])
    combos = expand(grid)
    assert len(combos) == 5 and {"seed": 2, "metrics": 5} not in combos
    z = sweep(strategy="zip", parameters={"seed": [0, 1], "metrics": [3, 4]})
    assert expand(z) == [{"seed": 0, "metrics": 3}, {"seed": 1, "metrics": 4}]
    with pytest.raises(SpecError, match="equally long"):
        sweep(strategy="zip", parameters={"seed": [0, 1], "metrics": [3]})


def test_random_is_seeded_and_respects_ranges() -> None:
    spec = {"strategy": "random", "samples": 20, "seed": 3,
            "parameters": {"sleep_s": {"low": 0.001, "high": 0.1, "log": True}, "seed": {"choices": [1, 2, 3]}}}
    a, b = expand(sweep(**spec)), expand(sweep(**spec))
    assert a == b and len(a) == 20
    assert all(0.001 <= c["sleep_s"] <= 0.1 and c["seed"] in (1, 2, 3) for c in a)
    assert expand(sweep(**{**spec, "seed": 4})) != a


def test_children_are_validated_and_named() -> None:
    children = child_specs(sweep(name="s", parameters={"seed": [0, 1]}))
    assert [c.name for _, c in children] == ["s-0000", "s-0001"] and [c.seed for _, c in children] == [0, 1]
    with pytest.raises(SpecError, match="sweep child 1 .*metrics"):
        child_specs(sweep(parameters={"metrics": [1, "many"]}))
    with pytest.raises(SpecError, match="no combination"):
        child_specs(sweep(parameters={"seed": [0]}, constraints=["seed > 0"]))


def test_constraint_language_is_small_and_names_unknown_parameters() -> None:
    params = {"bits": 3, "method.type": "gptq"}
    assert check_constraint('bits >= 3 and method.type in ["gptq", "rtn"]', params)
    assert not check_constraint("bits * 2 > 8 or not bits", params)
    with pytest.raises(SpecError, match="names 'group'"):
        check_constraint("group > 1", params)
    with pytest.raises(SpecError, match="not allowed"):
        check_constraint("__import__('os')", params)


def test_pareto_dominance() -> None:
    assert _dominates((1.0, 1.0), (1.0, 2.0)) and not _dominates((1.0, 2.0), (2.0, 1.0))


def test_pareto_front_equals_the_all_pairs_definition_with_ties():
    import random

    from bitsmith.platform.sweeps import _dominates, pareto_front

    rng = random.Random(0)
    for _ in range(300):
        n, dims = rng.randint(0, 30), rng.randint(1, 3)
        points = [tuple(float(rng.randint(0, 5)) for _ in range(dims)) for _ in range(n)]  # small ints: many ties
        brute = {i for i in range(n) if not any(_dominates(points[j], points[i]) for j in range(n) if j != i)}
        assert set(pareto_front(points)) == brute
