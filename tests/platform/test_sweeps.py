"""Sweep expansion: grid, zip and seeded random strategies, constraints, child validation, Pareto front."""
from __future__ import annotations

import pytest

from bitsmith.platform.errors import SpecError
from bitsmith.platform.specs.sweep import GridStrategy, OptunaStrategy, RandomStrategy
from bitsmith.platform.sweeps import check_constraint, child_specs, expand, load_sweep_spec
from bitsmith.platform.sweeps.results import _dominates, pareto_front

BASE = {"kind": "noop", "payload": "x"}


def sweep(**kw):
    return load_sweep_spec({"kind": "sweep", "base": BASE, **kw})


def test_grid_zip_and_constraints() -> None:
    grid = sweep(parameters={"seed": [0, 1, 2], "metrics": [1, 5]}, constraints=["not (seed == 2 and metrics > 1)"])
    combos = expand(grid)
    assert len(combos) == 5 and {"seed": 2, "metrics": 5} not in combos
    z = sweep(strategy={"type": "zip"}, parameters={"seed": [0, 1], "metrics": [3, 4]})
    assert expand(z) == [{"seed": 0, "metrics": 3}, {"seed": 1, "metrics": 4}]
    with pytest.raises(SpecError, match="equally long"):
        sweep(strategy="zip", parameters={"seed": [0, 1], "metrics": [3]})


def test_random_is_seeded_and_respects_ranges() -> None:
    spec = {"strategy": {"type": "random", "samples": 20, "seed": 3},
            "parameters": {"sleep_s": {"low": 0.001, "high": 0.1, "log": True}, "seed": {"choices": [1, 2, 3]}}}
    a, b = expand(sweep(**spec)), expand(sweep(**spec))
    assert a == b and len(a) == 20
    assert all(0.001 <= c["sleep_s"] <= 0.1 and c["seed"] in (1, 2, 3) for c in a)
    assert expand(sweep(**{**spec, "strategy": {"type": "random", "samples": 20, "seed": 4}})) != a


def test_each_strategy_has_its_own_fields() -> None:
    params = {"parameters": {"seed": [0, 1]}}
    assert sweep(**params).strategy == GridStrategy() == sweep(strategy="grid", **params).strategy
    with pytest.raises(SpecError, match="strategy.random.samples: Field required"):
        sweep(strategy={"type": "random"}, **params)
    with pytest.raises(SpecError, match="strategy.grid.samples: unknown field"):
        sweep(strategy={"type": "grid", "samples": 3}, **params)
    with pytest.raises(SpecError, match="strategy.type: unknown value 'bayes'; expected one of"):
        sweep(strategy={"type": "bayes"}, **params)
    with pytest.raises(SpecError, match="samples: belongs inside `strategy`"):
        sweep(strategy={"type": "random", "samples": 3}, samples=3, **params)
    with pytest.raises(SpecError, match="strategy grid takes lists of values"):
        sweep(parameters={"seed": {"choices": [0, 1]}})
    with pytest.raises(SpecError, match="strategy.samples: 1000000; expected at most 10000"):
        expand(sweep(strategy={"type": "random", "samples": 1_000_000}, **params))


def test_every_strategy_has_an_expansion_and_a_runner() -> None:
    from typing import get_args

    from bitsmith.platform.specs.sweep import Strategy
    from bitsmith.platform.sweeps.driver import RUNNERS
    from bitsmith.platform.sweeps.expand import _EXPANDERS

    strategies = set(get_args(get_args(Strategy)[0]))
    assert len(strategies) == 4 and set(_EXPANDERS) == strategies == set(RUNNERS)
    assert {s.model_fields["type"].default for s in strategies} == {"grid", "zip", "random", "optuna"}


FLAT = [  # the flat form of earlier sweep files, and as earlier versions stored every sweep (defaults included)
    ({"strategy": "random", "samples": 20, "seed": 3}, RandomStrategy(samples=20, seed=3)),
    ({"strategy": "grid", "samples": None, "seed": 0, "optuna": None}, GridStrategy()),
    ({"strategy": "random", "samples": 5, "seed": 0, "optuna": None}, RandomStrategy(samples=5)),
    ({"strategy": "optuna", "samples": None, "seed": 0, "optuna": {"trials": 4, "seed": 2, "sampler": None}},
     OptunaStrategy(trials=4, seed=2)),
]


@pytest.mark.parametrize(("flat", "strategy"), FLAT)
def test_flat_strategy_form_reads_as_the_canonical_one(flat, strategy) -> None:
    objectives = [{"metric": "m"}] if flat["strategy"] == "optuna" else []
    old = sweep(parameters={"seed": [0, 1]}, objectives=objectives, **flat)
    assert old.strategy == strategy
    assert load_sweep_spec(old.model_dump(mode="json")) == old  # the canonical dump reads back as itself
    assert set(old.model_dump()) == {"kind", "name", "base", "strategy", "parameters", "constraints",
                                     "max_concurrency", "objectives"}


def test_flat_form_errors_name_the_field() -> None:
    with pytest.raises(SpecError, match="strategy.random.samples: Field required"):
        sweep(strategy="random", parameters={"seed": [0]})
    with pytest.raises(SpecError, match="seed: only for strategy random; expected no seed for strategy grid"):
        sweep(strategy="grid", seed=3, parameters={"seed": [0]})


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

    rng = random.Random(0)
    for _ in range(300):
        n, dims = rng.randint(0, 30), rng.randint(1, 3)
        points = [tuple(float(rng.randint(0, 5)) for _ in range(dims)) for _ in range(n)]  # small ints: many ties
        brute = {i for i in range(n) if not any(_dominates(points[j], points[i]) for j in range(n) if j != i)}
        assert set(pareto_front(points)) == brute
