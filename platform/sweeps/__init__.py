"""Sweeps: expand a sweep spec into child job specs, run them with a concurrency limit, rank the results.

Modules, each depending only on those before it: `constraints` (the constraint language), `expand` (spec,
combinations per strategy, child specs), `results` (ranking, Pareto front, plot), `optuna` (the adaptive
strategy), `driver` (record, run and resume; dispatches on the strategy's type).
"""
from __future__ import annotations

from .constraints import check_constraint
from .driver import create_sweep, describe_plan, run_sweep
from .expand import MAX_CHILDREN, OPTUNA_TRIAL_TAG, child_spec, child_specs, expand, load_sweep_spec, sweep_input_refs
from .results import SweepRow, pareto_front, plot_objectives, sweep_results

__all__ = ["MAX_CHILDREN", "OPTUNA_TRIAL_TAG", "SweepRow", "check_constraint", "child_spec", "child_specs",
           "create_sweep", "describe_plan", "expand", "load_sweep_spec", "pareto_front", "plot_objectives",
           "run_sweep", "sweep_input_refs", "sweep_results"]
