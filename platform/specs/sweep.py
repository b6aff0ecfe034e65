"""Sweep specs: a base job spec plus parameters over dotted spec paths (grid, random, zip or optuna).

A sweep file is its own document (`kind: sweep`), not a job: `bitsmith sweep run FILE` expands it into
child job specs, each validated like any `bitsmith submit`.
"""
from __future__ import annotations

from typing import Any, Literal

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


class OptunaSearch(StrictModel):
    """How the `optuna` strategy searches: which sampler, how many children in total, the sampler's seed."""

    sampler: Literal["tpe", "nsga2", "random"] | None = Field(
        None, description="default: tpe for one objective, nsga2 for several")
    trials: int = Field(ge=1, description="children in total; a resumed sweep continues up to this many")
    seed: int = Field(0, ge=0, description="seed of the sampler (not of the children)")


class Objective(StrictModel):
    metric: str = Field(description="a final metric of the child runs, e.g. test/token_ppl")
    goal: Literal["min", "max"] = "min"


class SweepSpec(StrictModel):
    kind: Literal["sweep"] = "sweep"
    name: str | None = Field(None, max_length=200)
    base: dict[str, Any] = Field(description="a job spec (any kind) that every child starts from")
    strategy: Literal["grid", "random", "zip", "optuna"] = "grid"
    parameters: dict[str, tuple[Any, ...] | RandomParam] = Field(
        min_length=1, description="dotted spec path -> values (grid, zip, optuna) or a RandomParam (random, optuna)")
    samples: int | None = Field(None, ge=1, description="children drawn by the random strategy")
    seed: int = Field(0, ge=0, description="seed of the random strategy (not of the children)")
    constraints: tuple[str, ...] = Field(
        (), description="expressions over the parameters, e.g. 'bits >= 3 or method.type == \"gptq\"'; "
                        "combinations where one is false are skipped")
    max_concurrency: int = Field(4, ge=1, description="children running at once")
    objectives: tuple[Objective, ...] = ()
    optuna: OptunaSearch | None = Field(None, description="sampler, trials and seed of the optuna strategy")

    @model_validator(mode="after")
    def _strategy_fits(self) -> "SweepSpec":
        lists = {k: v for k, v in self.parameters.items() if not isinstance(v, RandomParam)}
        if self.strategy in ("grid", "zip") and len(lists) != len(self.parameters):
            raise ValueError(f"strategy {self.strategy} takes lists of values for every parameter")
        if self.strategy in ("grid", "zip") and any(len(v) == 0 for v in lists.values()):
            raise ValueError("every parameter needs at least one value")
        if self.strategy == "zip" and len({len(v) for v in lists.values()}) > 1:
            lengths = {k: len(v) for k, v in lists.items()}
            raise ValueError(f"strategy zip needs equally long value lists; got {lengths}")
        if self.strategy == "random" and self.samples is None:
            raise ValueError("strategy random needs `samples`")
        if self.strategy == "optuna":
            self._optuna_fits()
        elif self.optuna is not None:
            raise ValueError(f"optuna: only for strategy optuna (this sweep's strategy is {self.strategy})")
        return self

    def _optuna_fits(self) -> None:
        if self.optuna is None:
            raise ValueError("optuna: strategy optuna needs `optuna: {trials: N}` (and optionally sampler, seed)")
        if not self.objectives:
            raise ValueError("objectives: strategy optuna needs at least one objective to optimize")
        if self.samples is not None:
            raise ValueError("samples: strategy optuna counts its children with `optuna.trials`")
        if self.seed != 0:
            raise ValueError("seed: strategy optuna seeds its sampler with `optuna.seed`")
        for name, param in self.parameters.items():
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
