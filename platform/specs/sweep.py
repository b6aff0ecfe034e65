"""Sweep specs: a base job spec plus parameters over dotted spec paths, searched by one strategy.

A sweep file is its own document (`kind: sweep`), not a job: `bitsmith sweep run FILE` expands it into
child job specs, each validated like any `bitsmith submit`. The strategy is a tagged union with its own
fields: `strategy: {type: grid}` (or `strategy: grid`), `{type: zip}`, `{type: random, samples: N, seed: S}`,
`{type: optuna, trials: N, sampler: tpe, seed: S}`. The flat form of earlier sweep files and of sweeps stored
by earlier versions (`samples`/`seed` beside `strategy: random`, `optuna: {...}` beside `strategy: optuna`)
is read as the same spec.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from .common import StrictModel


class RandomParam(StrictModel):
    """A parameter sampled by the `random` strategy: from `choices`, or uniformly in [low, high]."""

    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = Field(False, description="sample log-uniformly between low and high")
    integer: bool = Field(False, description="round samples to integers")

    @model_validator(mode="after")
    def _one_form(self) -> "RandomParam":
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ValueError("give either `choices` or both `low` and `high`")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low is not None and self.low <= 0:
            raise ValueError("log sampling needs low > 0")
        return self


class Objective(StrictModel):
    metric: str = Field(description="a final metric of the child runs, e.g. test/token_ppl")
    goal: Literal["min", "max"] = "min"


def _value_lists(strategy: str, parameters: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """The parameters as value lists, refusing ranges and empty lists (grid and zip)."""
    if any(isinstance(v, RandomParam) for v in parameters.values()):
        raise ValueError(f"strategy {strategy} takes lists of values for every parameter")
    if any(len(v) == 0 for v in parameters.values()):
        raise ValueError("every parameter needs at least one value")
    return parameters


class GridStrategy(StrictModel):
    """Every combination of the parameters' value lists."""

    type: Literal["grid"] = "grid"

    def check_fits(self, parameters: dict[str, Any], objectives: tuple[Objective, ...]) -> None:
        _value_lists(self.type, parameters)


class ZipStrategy(StrictModel):
    """The i-th value of every parameter together: equally long value lists."""

    type: Literal["zip"] = "zip"

    def check_fits(self, parameters: dict[str, Any], objectives: tuple[Objective, ...]) -> None:
        lists = _value_lists(self.type, parameters)
        if len({len(v) for v in lists.values()}) > 1:
            lengths = {k: len(v) for k, v in lists.items()}
            raise ValueError(f"strategy zip needs equally long value lists; got {lengths}")


class RandomStrategy(StrictModel):
    """`samples` combinations drawn with `seed` from value lists, `choices` or [low, high] ranges."""

    type: Literal["random"] = "random"
    samples: int = Field(ge=1, description="children drawn")
    seed: int = Field(0, ge=0, description="seed of the draw (not of the children)")

    def check_fits(self, parameters: dict[str, Any], objectives: tuple[Objective, ...]) -> None:
        """Every parameter form is sampleable."""


class OptunaStrategy(StrictModel):
    """Children picked by Optuna while the sweep runs: which sampler, how many children, the sampler's seed."""

    type: Literal["optuna"] = "optuna"
    sampler: Literal["tpe", "nsga2", "random"] | None = Field(
        None, description="default: tpe for one objective, nsga2 for several")
    trials: int = Field(ge=1, description="children in total; a resumed sweep continues up to this many")
    seed: int = Field(0, ge=0, description="seed of the sampler (not of the children)")

    def check_fits(self, parameters: dict[str, Any], objectives: tuple[Objective, ...]) -> None:
        if not objectives:
            raise ValueError("objectives: strategy optuna needs at least one objective to optimize")
        for name, param in parameters.items():
            values = param if not isinstance(param, RandomParam) else param.choices
            if values is not None and not values:
                raise ValueError(f"parameters.{name}: needs at least one value")
            odd = [v for v in values or () if v is not None and not isinstance(v, (bool, int, float, str))]
            if odd:
                raise ValueError(f"parameters.{name}: strategy optuna takes values that are null, bool, number or "
                                 f"string; got {odd[0]!r}")
            if isinstance(param, RandomParam) and param.integer and values is None and not (
                    float(param.low).is_integer() and float(param.high).is_integer()):  # type: ignore[arg-type]
                raise ValueError(f"parameters.{name}: an integer range needs whole-number low and high for "
                                 f"strategy optuna; got [{param.low}, {param.high}]")


Strategy = Annotated[Union[GridStrategy, ZipStrategy, RandomStrategy, OptunaStrategy], Field(discriminator="type")]
_FLAT_KEYS = ("samples", "seed", "optuna")  # strategy fields of the flat form, beside `strategy: NAME`


def _flat_strategy(name: str, flat: dict[str, Any]) -> Any:
    """`strategy: NAME` plus the flat keys as the strategy's own mapping (stored defaults dropped)."""
    given = {k: v for k, v in flat.items() if (k, v) not in (("samples", None), ("seed", 0), ("optuna", None))}
    if "optuna" in given and name != "optuna":
        raise ValueError(f"optuna: only for strategy optuna (this sweep's strategy is {name})")
    if name == "random":
        return {"type": name, **given}
    if name == "optuna":
        if "samples" in given:
            raise ValueError("samples: strategy optuna counts its children with `optuna.trials`")
        if "seed" in given:
            raise ValueError("seed: strategy optuna seeds its sampler with `optuna.seed`")
        if "optuna" not in given:
            raise ValueError("optuna: strategy optuna needs `optuna: {trials: N}` (and optionally sampler, seed)")
        if not isinstance(given["optuna"], dict):
            raise ValueError("optuna: expected a mapping {trials: N, sampler: ..., seed: ...}")
        return {"type": name, **given["optuna"]}
    if given:
        key = next(iter(given))
        raise ValueError(f"{key}: only for strategy random; expected no {key} for strategy {name}")
    return {"type": name}


class SweepSpec(StrictModel):
    kind: Literal["sweep"] = "sweep"
    name: str | None = Field(None, max_length=200)
    base: dict[str, Any] = Field(description="a job spec (any kind) that every child starts from")
    strategy: Strategy = Field(default_factory=GridStrategy,
                               description="grid, zip, random {samples, seed} or optuna {trials, sampler, seed}")
    parameters: dict[str, tuple[Any, ...] | RandomParam] = Field(
        min_length=1, description="dotted spec path -> values (grid, zip, optuna) or a RandomParam (random, optuna)")
    constraints: tuple[str, ...] = Field(
        (), description="expressions over the parameters, e.g. 'bits >= 3 or method.type == \"gptq\"'; "
                        "combinations where one is false are skipped")
    max_concurrency: int = Field(4, ge=1, description="children running at once")
    objectives: tuple[Objective, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _read_strategy_name(cls, data: Any) -> Any:
        """`strategy: NAME` is `{type: NAME}`; with the flat form's keys beside it, they go inside."""
        if not isinstance(data, dict):
            return data
        flat = {k: data[k] for k in _FLAT_KEYS if k in data}
        strategy = data.get("strategy", "grid")
        if not isinstance(strategy, str):
            if flat:
                key = next(iter(flat))
                raise ValueError(f"{key}: belongs inside `strategy` (e.g. strategy: {{type: random, samples: 20}})")
            return data
        rest = {k: v for k, v in data.items() if k not in _FLAT_KEYS}
        return {**rest, "strategy": _flat_strategy(strategy, flat)}

    @model_validator(mode="after")
    def _strategy_fits(self) -> "SweepSpec":
        self.strategy.check_fits(self.parameters, self.objectives)
        return self
