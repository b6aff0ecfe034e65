"""Search building blocks without a model: mutation, knapsack solvers, bisection, budgets, spec checks."""
from __future__ import annotations

import itertools
import random
import typing
from pathlib import Path

import pytest

from bitsmith.platform.errors import DataError, SpecError
from bitsmith.platform.specs import parse_spec
from bitsmith.platform.specs.search import SearchMethod, SearchSpec
from bitsmith.workers import search
from bitsmith.workers.allocation import evo, knapsack
from bitsmith.workers.allocation.bisect import bisect_drop
from bitsmith.workers.allocation.levels import LayerLevels, Level, LevelDB

BITS = (2, 3, 4, 5, 6, 8)


def _db(shapes: list[tuple[int, int]], bits: tuple[int, ...] = BITS, group: int = 32) -> LevelDB:
    layers = []
    for i, (out_f, in_f) in enumerate(shapes):
        levels = tuple(Level(bits=b, storage_bits=out_f * in_f * b + out_f * (in_f // group) * (16 + b),
                             effective_bits=0.0, rel_error=2.0 ** -b * (1 + i % 3), weight_sq_error=1.0 / b,
                             act_order=False) for b in bits)
        layers.append(LayerLevels(name=f"model.layers.{i}.proj", block=i, shape=(out_f, in_f), transposed=False,
                                  bias=False, group_size=group, input_trace=1.0, levels=levels))
    return LevelDB(path=Path("."), grid=tuple((b, group) for b in bits), symmetric=False, method={"type": "gptq"},
                   layers=tuple(layers), group_size=group)


def _grid_db(shapes: list[tuple[int, int]], grid: tuple[tuple[int, int], ...]) -> LevelDB:
    """A database with several group sizes: storage = codes + fp16 scale and a `bits`-wide zero per group."""
    layers = []
    for i, (out_f, in_f) in enumerate(shapes):
        levels = tuple(Level(bits=b, storage_bits=out_f * in_f * b + out_f * (in_f // g) * (16 + b),
                             effective_bits=b + (16 + b) / g, rel_error=2.0 ** -b * 64 / g, weight_sq_error=1.0,
                             act_order=False, group_size=g) for b, g in grid)
        layers.append(LayerLevels(name=f"model.layers.{i}.proj", block=i, shape=(out_f, in_f), transposed=False,
                                  bias=False, group_size=grid[0][1], input_trace=1.0, levels=levels))
    return LevelDB(path=Path("."), grid=grid, symmetric=False, method={"type": "gptq"}, layers=tuple(layers),
                   group_size=grid[0][1])


def _costs(db: LevelDB) -> list[list[int]]:
    return [[lv.storage_bits for lv in layer.levels] for layer in db.layers]


def _spec(**fields) -> SearchSpec:
    data = {"kind": "search", "inputs": {"model": "m", "calibration": "c"},
            "budget": {"type": "avg_bits", "bits_per_weight": 3.0}, **fields}
    return parse_spec(data)


# -- mutation ---------------------------------------------------------------------------------------
def test_mutations_keep_the_budget_exactly() -> None:
    db = _db([(64, 64)] * 6 + [(128, 64)] * 4 + [(64, 192)] * 3 + [(32, 32)])
    groups = evo.equal_size_groups(db)
    assert sorted(len(g) for g in groups) == [3, 4, 6]  # the lone 32x32 layer cannot swap with anyone
    rng = random.Random(0)
    parent = [rng.randrange(len(BITS)) for _ in db.layers]
    nominal, stored = db.nominal_bits(parent), db.storage_bits(parent)
    changed = 0
    for _ in range(500):
        child = evo.mutate(parent, groups, _costs(db), rng, max_switches=3)
        assert db.nominal_bits(child) == nominal
        assert db.storage_bits(child) == stored
        assert all(0 <= lv < len(BITS) for lv in child)
        changed += child != parent
        parent = child
    assert changed > 400


def test_a_mutation_switches_one_layer_up_and_one_down_inside_a_group() -> None:
    db = _db([(64, 64)] * 3 + [(128, 64)] * 2)
    groups = evo.equal_size_groups(db)
    parent = [1, 1, 1, 2, 2]
    for seed in range(50):
        child = evo.level_switch(parent, groups, _costs(db), random.Random(seed))
        diff = [c - p for c, p in zip(child, parent)]
        assert sorted(diff) == [-1, 0, 0, 0, 1]
        moved = [i for i, d in enumerate(diff) if d]
        assert any(set(moved) <= set(g) for g in groups)


GRID = ((2, 64), (2, 32), (3, 128), (3, 64), (3, 32), (4, 128), (4, 64))


def test_with_several_group_sizes_mutations_move_between_them_and_never_exceed_the_parents_size() -> None:
    db = _grid_db([(64, 128)] * 8 + [(128, 128)] * 4, GRID)
    groups, costs = evo.equal_size_groups(db), _costs(db)
    rng = random.Random(1)
    parent = [GRID.index((3, 64))] * len(db.layers)  # uniform: no exact switch exists, only repairs move it
    cap = db.storage_bits(parent)
    seen: set[int] = set()
    for _ in range(300):
        child = evo.mutate(parent, groups, costs, rng, max_switches=3, repair_rate=0.5, cap=cap)
        assert db.storage_bits(child) <= cap
        assert all(0 <= lv < len(GRID) for lv in child)
        seen |= set(child)
        parent = child
    assert len(seen) >= 5  # it reaches most levels, group sizes included
    assert db.storage_bits(parent) >= cap - max(c[-1] - c[0] for c in costs)  # the budget does not drain away


def test_a_repair_raises_one_layer_and_lowers_others_of_its_group_until_within_the_parent() -> None:
    db = _grid_db([(64, 128)] * 4, GRID)
    costs = _costs(db)
    parent = [GRID.index((3, 64))] * 4
    for seed in range(30):
        child = evo.level_switch(parent, evo.equal_size_groups(db), costs, random.Random(seed), repair=True)
        assert db.storage_bits(child) <= db.storage_bits(parent)
        assert max(c - p for c, p in zip(child, parent)) >= 1 and min(c - p for c, p in zip(child, parent)) <= -1


def test_evo_state_round_trips_through_json() -> None:
    import json

    rng = random.Random(3)
    rng.random()
    state = evo.EvoState(generation=4, parent=[1, 2], evaluations=40, rng_state=rng.getstate(),
                         history=[{"generation": 1, "kl": 0.5, "evaluations": 10}])
    back = evo.EvoState.from_json(json.loads(json.dumps(state.to_json("key"))))
    other = random.Random()
    other.setstate(back.rng_state)
    assert other.random() == rng.random()
    assert (back.generation, back.parent, back.history) == (4, [1, 2], state.history)


# -- knapsack ---------------------------------------------------------------------------------------
def _brute_force(costs, losses, budget):
    best = None
    for choice in itertools.product(*[range(len(c)) for c in costs]):
        if knapsack.allocation_cost(costs, choice) <= budget:
            value = sum(loss[lv] for loss, lv in zip(losses, choice))
            best = value if best is None else min(best, value)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_dp_and_milp_agree_with_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    n_layers, n_levels = rng.randint(2, 5), rng.randint(2, 4)
    sizes = [rng.choice([4, 8, 12]) for _ in range(n_layers)]
    costs = [sorted(s * rng.randint(1, 9) for _ in range(n_levels)) for s in sizes]
    losses = [sorted((rng.random() for _ in range(n_levels)), reverse=True) for _ in range(n_layers)]
    budget = rng.randint(sum(min(c) for c in costs), sum(max(c) for c in costs))
    want = _brute_force(costs, losses, budget)
    for solver in ("dp", "milp"):
        got = knapsack.solve(solver, costs, losses, budget)
        assert knapsack.allocation_cost(costs, got) <= budget
        assert sum(loss[lv] for loss, lv in zip(losses, got)) == pytest.approx(want, abs=1e-9), solver


def test_knapsack_reports_infeasible_budgets() -> None:
    assert knapsack.solve_dp([[5, 6]], [[1.0, 0.0]], 4) is None
    assert knapsack.solve_milp([[5, 6]], [[1.0, 0.0]], 4) is None


def test_coarsened_dp_stays_within_budget() -> None:
    rng = random.Random(0)
    costs = [[rng.randint(1000, 2000) * b for b in (2, 3, 4)] for _ in range(30)]
    losses = [[1.0, 0.5, 0.1] for _ in range(30)]
    budget = sum(c[1] for c in costs)
    got = knapsack.solve_dp(costs, losses, budget, max_states=500)
    assert knapsack.allocation_cost(costs, got) <= budget
    exact = knapsack.solve_milp(costs, losses, budget)
    value = lambda a: sum(row[v] for row, v in zip(losses, a))  # noqa: E731
    assert value(got) <= value(exact) * 1.2


# -- bisection ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [0, 1, 4, 7, 10])
def test_bisect_finds_the_largest_acceptable_drop(threshold: int) -> None:
    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    allocation, probes = bisect_drop(order, high=2, low=0, n_layers=10,
                                     within=lambda a: sum(lv == 0 for lv in a) <= threshold)
    assert sum(lv == 0 for lv in allocation) == threshold
    assert {i for i, lv in enumerate(allocation) if lv == 0} == set(order[:threshold])
    assert len(probes) <= 5


# -- budgets and specs --------------------------------------------------------------------------------
def test_registry_keys_equal_the_spec_tags() -> None:
    union = typing.get_args(typing.get_args(SearchMethod)[0])
    tags = {typing.get_args(m.model_fields["type"].annotation)[0] for m in union}
    assert set(search.ALLOCATORS) == tags


@pytest.mark.parametrize("bits_per_weight, words", [(1.5, "below the smallest level"),
                                                     (9.0, "above the largest level")])
def test_avg_bits_budgets_outside_the_levels_are_rejected(bits_per_weight: float, words: str) -> None:
    with pytest.raises(SpecError) as err:
        _spec(budget={"type": "avg_bits", "bits_per_weight": bits_per_weight})
    assert "budget.bits_per_weight" in str(err.value) and words in str(err.value)


def test_quality_budget_needs_bisect_and_bisect_needs_quality() -> None:
    with pytest.raises(SpecError, match="budget.type: a quality budget needs method bisect"):
        _spec(budget={"type": "quality", "max_ppl_increase_pct": 2.0})
    with pytest.raises(SpecError, match="budget.type: method bisect needs a quality budget"):
        _spec(method={"type": "bisect"})
    with pytest.raises(SpecError, match="method.low_bits"):
        _spec(method={"type": "bisect", "low_bits": 5, "high_bits": 6},
              budget={"type": "quality", "max_ppl_increase_pct": 2.0}, levels={"bits": [2, 3, 4, 6]})
    _spec(method={"type": "bisect"}, budget={"type": "quality", "max_ppl_increase_pct": 2.0})


def test_evo_stage_settings_are_checked() -> None:
    with pytest.raises(SpecError, match="must end at 1"):
        _spec(method={"type": "evo", "stages": [{"survivors": 4, "sequences": 2}]})
    with pytest.raises(SpecError, match="exceed fitness_sequences"):
        _spec(method={"type": "evo", "fitness_sequences": 4, "stages": [{"survivors": 1, "sequences": 8}]})
    with pytest.raises(SpecError, match="method.type"):
        _spec(method={"type": "anneal"})


def test_size_budgets_that_cannot_be_met_are_rejected_at_run_time() -> None:
    db = _db([(64, 64)] * 4, bits=(2, 3, 4))
    low = sum(layer.levels[0].storage_bits for layer in db.layers) // 8
    high = sum(layer.levels[-1].storage_bits for layer in db.layers) // 8
    for size, words in [(low - 100, "below the smallest allocation"), (high + 100, "above the largest allocation")]:
        spec = _spec(budget={"type": "size_bytes", "size_bytes": size}, levels={"bits": [2, 3, 4]})
        with pytest.raises(DataError) as err:
            search.budget_costs(spec, db)
        assert str(err.value).startswith("budget.size_bytes:") and words in str(err.value)
    spec = _spec(budget={"type": "size_bytes", "size_bytes": (low + high) // 2}, levels={"bits": [2, 3, 4]})
    costs, cap = search.budget_costs(spec, db)
    assert cap == (low + high) // 2 * 8 and costs[0] == [lv.storage_bits for lv in db.layers[0].levels]


def test_uniform_picks_the_widest_level_within_budget() -> None:
    db = _db([(64, 64)] * 4, bits=(2, 3, 4))
    spec = _spec(budget={"type": "avg_bits", "bits_per_weight": 3.5}, levels={"bits": [2, 3, 4]})
    costs, cap = search.budget_costs(spec, db)
    assert search.uniform_allocation(costs, cap, spec) == [1, 1, 1, 1]
    filled = search.fill_greedily([1, 1, 1, 1], costs, cap, random.Random(0))
    assert db.nominal_bits(filled) == 3.5


def test_an_unknown_method_name_lists_the_valid_ones() -> None:
    with pytest.raises(SpecError, match="expected one of bisect, dp, evo, hessian, linear, uniform"):
        search.allocator_for("anneal")
