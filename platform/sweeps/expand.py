"""Sweep expansion: the spec read and checked, its parameter combinations per strategy (constraints
applied), and the validated child job spec of each combination."""
from __future__ import annotations

import itertools
import json
import math
import random
from typing import Any, Callable

from pydantic import ValidationError

from ..errors import SpecError
from ..specs import JobSpecBase, apply_overrides, check_spec_storable, format_validation_error, parse_spec
from ..specs.sweep import GridStrategy, OptunaStrategy, RandomParam, RandomStrategy, SweepSpec, ZipStrategy
from .constraints import check_constraint

MAX_CHILDREN = 10_000  # combinations a grid or random sweep may expand to
OPTUNA_TRIAL_TAG = "optuna-trial:"  # + the trial's number: a tag on every child of an optuna sweep


def load_sweep_spec(data: dict[str, Any], source: str = "sweep") -> SweepSpec:
    """Validate a sweep document (canonical or flat strategy form); a `SpecError` names each bad field."""
    try:
        sweep = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None
    check_spec_storable(sweep.model_dump(), source)
    return sweep


def expand(sweep: SweepSpec) -> list[dict[str, Any]]:
    """The parameter combinations of a sweep, in a stable order, constraints applied.

    Optuna picks its combinations while the sweep runs; for it this is one representative combination
    (each parameter's first value or low bound) that checks the base spec and the constraints' names.
    """
    return _EXPANDERS[type(sweep.strategy)](sweep)


def _feasible(sweep: SweepSpec, combos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in combos if all(check_constraint(expr, c) for expr in sweep.constraints)]


def _grid(sweep: SweepSpec) -> list[dict[str, Any]]:
    """Every combination; refused before expanding when there are more than MAX_CHILDREN."""
    sizes = [len(values) for values in sweep.parameters.values()]  # type: ignore[arg-type]
    count = math.prod(sizes)
    if count > MAX_CHILDREN:
        raise SpecError(f"parameters: a grid of {count} combinations ({' x '.join(map(str, sizes))}); "
                        f"expected at most {MAX_CHILDREN} children (split the sweep or use strategy random)")
    names = list(sweep.parameters)
    return _feasible(sweep, [dict(zip(names, values)) for values in itertools.product(*sweep.parameters.values())])


def _zip(sweep: SweepSpec) -> list[dict[str, Any]]:
    names = list(sweep.parameters)
    return _feasible(sweep, [dict(zip(names, values)) for values in zip(*sweep.parameters.values())])


def _random(sweep: SweepSpec) -> list[dict[str, Any]]:
    """`samples` draws seeded by the strategy's seed; refused above MAX_CHILDREN samples."""
    strategy = sweep.strategy
    assert isinstance(strategy, RandomStrategy)
    if strategy.samples > MAX_CHILDREN:
        raise SpecError(f"strategy.samples: {strategy.samples}; expected at most {MAX_CHILDREN} children")
    rng = random.Random(strategy.seed)
    return _feasible(sweep, [{name: _sample(param, rng) for name, param in sweep.parameters.items()}
                             for _ in range(strategy.samples)])


def _representative(sweep: SweepSpec) -> list[dict[str, Any]]:
    combo = {name: _first(param) for name, param in sweep.parameters.items()}
    for expr in sweep.constraints:
        check_constraint(expr, combo)  # raises on unknown names; the representative may still be infeasible
    return [combo]


_EXPANDERS: dict[type, Callable[[SweepSpec], list[dict[str, Any]]]] = {
    GridStrategy: _grid, ZipStrategy: _zip, RandomStrategy: _random, OptunaStrategy: _representative}


def _sample(param: RandomParam | tuple[Any, ...], rng: random.Random) -> Any:
    if not isinstance(param, RandomParam):
        return rng.choice(param)
    if param.choices is not None:
        return rng.choice(param.choices)
    low, high = float(param.low), float(param.high)  # type: ignore[arg-type]
    value = math.exp(rng.uniform(math.log(low), math.log(high))) if param.log else rng.uniform(low, high)
    return int(round(value)) if param.integer else value


def _first(param: RandomParam | tuple[Any, ...]) -> Any:
    if not isinstance(param, RandomParam):
        return param[0]
    if param.choices is not None:
        return param.choices[0]
    return int(param.low) if param.integer else param.low  # type: ignore[arg-type]


def child_spec(sweep: SweepSpec, params: dict[str, Any], index: int) -> JobSpecBase:
    """The validated child spec for one combination: the base with `params` applied, named after the sweep."""
    data = apply_overrides(sweep.base, [f"{k}={json.dumps(v)}" for k, v in params.items()])
    if sweep.name and "name" not in params:
        data["name"] = f"{sweep.name}-{index:04d}"
    if isinstance(sweep.strategy, OptunaStrategy):  # each trial its own run row: repeats stay separate trials
        data["tags"] = [*data.get("tags", []), f"{OPTUNA_TRIAL_TAG}{index}"]
    return parse_spec(data, source=f"sweep child {index} {params}")


def child_specs(sweep: SweepSpec) -> list[tuple[dict[str, Any], JobSpecBase]]:
    """(parameters, validated child spec) for every combination; any invalid child fails the whole sweep."""
    children = [(params, child_spec(sweep, params, i)) for i, params in enumerate(expand(sweep))]
    if not children:
        raise SpecError("sweep: no combination satisfies the constraints; expected at least one child")
    return children


def sweep_input_refs(sweep: SweepSpec) -> set[str]:
    """Every input ref a child of the sweep can use: those of the expanded children (optuna: its
    representative) plus each string among the values of a parameter under `inputs.`."""
    return {ref for _, ref in sweep_input_fields(sweep)}


def sweep_input_fields(sweep: SweepSpec) -> list[tuple[str, str]]:
    """(sweep field, ref) of every input ref a child can use (as `sweep_input_refs`), each once, named by the
    field it comes from: `base.inputs.NAME` or `parameters.inputs.NAME`."""
    found: dict[tuple[str, str], None] = {}
    for _, spec in child_specs(sweep):
        for role, ref in spec.input_refs().items():
            path = f"inputs.{role.partition('.')[0]}"
            found[(f"parameters.{path}" if path in sweep.parameters else f"base.{spec.input_field(role)}", ref)] = None
    for path, param in sweep.parameters.items():
        if path.startswith("inputs."):
            values = (param.choices or ()) if isinstance(param, RandomParam) else param
            found.update({(f"parameters.{path}", ref): None for ref in _strings(values)})
    return list(found)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _strings(item)]
    return []


def spec_value(data: dict[str, Any], path: str) -> Any:
    """The value at a dotted parameter path of a (child) spec, None where it is missing."""
    for part in path.split("."):
        data = data.get(part) if isinstance(data, dict) else None  # type: ignore[assignment]
    return data
