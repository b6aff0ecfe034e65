"""The `optuna` sweep strategy: ask Optuna for children, run them in batches, tell it their final metrics.

Optuna is an optional extra, imported only when such a sweep runs. The study lives in memory and is
rebuilt from the store on every start, so `bitsmith sweep resume` continues a sweep whose submitting
process died: finished children become finished trials, children that never finished run again under
their trial number, and new trials are asked until the sweep has `strategy.trials` children. Each child
carries its trial number as a tag (`optuna-trial:N`); its parameters are read back from its spec.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any, Callable

from .. import store
from ..config import Settings
from ..errors import SpecError, UsageError
from ..specs import semantic_json
from ..specs.sweep import OptunaStrategy, RandomParam, SweepSpec
from ..store.records import SUCCEEDED, TERMINAL_STATUSES
from .constraints import check_constraint
from .expand import OPTUNA_TRIAL_TAG, child_spec, load_sweep_spec, spec_value

log = logging.getLogger(__name__)

_DIRECTIONS = {"min": "minimize", "max": "maximize"}
_MAX_INFEASIBLE_ASKS = 1000  # consecutive suggestions the constraints reject before the sweep gives up


def require_optuna() -> Any:
    """The optuna module, or a UsageError naming the extra to install."""
    try:
        import optuna
    except ImportError:
        raise UsageError("strategy optuna needs the optuna extra: pip install 'bitsmith[optuna]'",
                         hint="pip install 'bitsmith[optuna]'") from None
    return optuna


def _strategy(sweep: SweepSpec) -> OptunaStrategy:
    if not isinstance(sweep.strategy, OptunaStrategy):
        raise UsageError(f"strategy {sweep.strategy.type}: not an optuna sweep; expected strategy optuna")
    return sweep.strategy


def sampler_name(sweep: SweepSpec) -> str:
    """The sampler a sweep uses: its own choice, else tpe for one objective and nsga2 for several."""
    return _strategy(sweep).sampler or ("tpe" if len(sweep.objectives) == 1 else "nsga2")


def describe_plan(sweep: SweepSpec, children: int) -> str:
    """The plan line of `sweep run` (`children` is the one representative); needs the optuna extra."""
    require_optuna()
    return f"{_strategy(sweep).trials} children chosen by optuna ({sampler_name(sweep)})"


def _samplers(optuna: Any) -> dict[str, Callable[[int], Any]]:
    """Sampler name (the spec's `strategy.sampler` values) -> factory taking the seed."""
    return {"tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
            "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed),
            "random": lambda seed: optuna.samplers.RandomSampler(seed=seed)}


def search_space(sweep: SweepSpec) -> dict[str, Any]:
    """Parameter path -> Optuna distribution: lists and `choices` are categorical, low/high ranges numeric."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space: dict[str, Any] = {}
    for name, param in sweep.parameters.items():
        if not isinstance(param, RandomParam):
            space[name] = CategoricalDistribution(list(param))
        elif param.choices is not None:
            space[name] = CategoricalDistribution(list(param.choices))
        elif param.integer:
            space[name] = IntDistribution(int(param.low), int(param.high), log=param.log)  # type: ignore[arg-type]
        else:
            space[name] = FloatDistribution(param.low, param.high, log=param.log)  # type: ignore[arg-type]
    return space


def run_optuna_sweep(sweep_id: str, settings: Settings, *, executor: str = "ray", no_cache: bool = False,
                     on_finish: Callable[[str, str], None] | None = None) -> dict[str, str]:
    """Ask up to `max_concurrency` trials, run their children, tell the results; repeat until `strategy.trials`.

    Returns run id -> final status of the children run by this call (cache hits are told at once, not run).
    """
    optuna = require_optuna()
    from optuna.trial import TrialState

    from ..provenance import code_version
    from ..scheduler.ray_executor import EXECUTORS
    from ..scheduler.submit import record_submission, resolve_inputs

    db = store.open_database(settings.db_url)
    record = store.get_sweep(db, sweep_id)
    sweep = load_sweep_spec(record.spec, source=f"sweep {record.id}")
    strategy = _strategy(sweep)
    space = search_space(sweep)
    # A resumed sweep reseeds its sampler past the trials it has, or it would repeat its first suggestions.
    seed = strategy.seed + len(record.run_ids)
    study = optuna.create_study(study_name=f"sweep-{record.id}",
                                directions=[_DIRECTIONS[o.goal] for o in sweep.objectives],
                                sampler=_samplers(optuna)[sampler_name(sweep)](seed))
    numbers, unfinished = _rebuild_study(db, record, sweep, study, space)
    for old_run_id, _, params in unfinished:
        study.enqueue_trial(params)  # the next asks return these first, in this order
        store.request_cancel(db, old_run_id)  # its new run supersedes it: don't leave the old row queued/running
    retry = deque(n for _, n, _ in unfinished)
    next_number = max(numbers, default=-1) + 1
    code = code_version()

    def tell(trial: Any, run_id: str) -> None:
        values = objective_values(db, sweep, run_id)
        if values is None:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, values)

    def ask() -> tuple[Any, int, Any]:
        """The next feasible trial, its number (the child's tag) and its child spec."""
        nonlocal next_number
        for _ in range(_MAX_INFEASIBLE_ASKS):
            trial = study.ask(space)
            if retry:  # an enqueued trial: a child that never finished, run again under its number
                number = retry.popleft()
                return trial, number, child_spec(sweep, trial.params, number)
            if all(check_constraint(expr, trial.params) for expr in sweep.constraints):
                number, next_number = next_number, next_number + 1
                numbers.append(number)
                return trial, number, child_spec(sweep, trial.params, number)
            study.tell(trial, state=TrialState.PRUNED)  # infeasible: no child; TPE counts it among the bad
        raise SpecError(f"constraints: rejected {_MAX_INFEASIBLE_ASKS} suggestions in a row; expected "
                        "constraints that most of the parameter space satisfies")

    store.set_sweep_status(db, record.id, "running")
    finals: dict[str, str] = {}
    held = None  # a trial whose child equals one in the running batch: submitted after it, as a cache hit
    while True:
        batch: dict[str, tuple[Any, str]] = {}  # semantic spec -> (trial, run id)
        while len(batch) < sweep.max_concurrency and (held or retry or len(numbers) < strategy.trials):
            trial, number, spec = held or ask()
            held = None
            key = semantic_json(spec.with_resolved_inputs(resolve_inputs(db, spec, record.resolved_inputs)))
            if key in batch:
                held = (trial, number, spec)
                break
            sub = record_submission(db, spec, code=code, executor=executor, no_cache=no_cache, sweep_id=record.id,
                                    pinned=record.resolved_inputs)
            if sub.cache_hit:
                tell(trial, sub.run.id)
            else:
                batch[key] = (trial, sub.run.id)
        if not batch:
            break
        ran = EXECUTORS[executor]([rid for _, rid in batch.values()], settings, on_finish=on_finish,
                                  max_in_flight=sweep.max_concurrency)
        finals.update(ran)
        for trial, run_id in batch.values():
            tell(trial, run_id)
    failed = any(status != SUCCEEDED for status in finals.values())
    store.set_sweep_status(db, record.id, "failed" if failed else "succeeded")
    return finals


def objective_values(db: Any, sweep: SweepSpec, run_id: str) -> list[float] | None:
    """The child's final value of each objective, or None (a failed trial) when it failed or lacks one."""
    if store.get_run(db, run_id).status != SUCCEEDED:
        return None
    metrics = store.final_metrics(db, [run_id]).get(run_id, {})
    missing = [o.metric for o in sweep.objectives if not math.isfinite(metrics.get(o.metric, math.nan))]
    if missing:
        log.warning("sweep child %s succeeded without a finite %s; told to optuna as a failed trial", run_id,
                    " or ".join(missing))
        return None
    return [metrics[o.metric] for o in sweep.objectives]


def _rebuild_study(db: Any, record: Any, sweep: SweepSpec, study: Any,
                   space: dict[str, Any]) -> tuple[list[int], list[tuple[str, int, dict[str, Any]]]]:
    """Add the sweep's finished children to `study` as finished trials, in trial order.

    Returns every trial number used so far and (run id, number, params) of the children that never finished.
    """
    import optuna
    from optuna.trial import TrialState

    newest: dict[int, Any] = {}  # trial number -> its newest child (a re-run supersedes a dead one)
    for run_id in record.run_ids:  # oldest first
        run = store.get_run(db, run_id)
        number = next((int(t[len(OPTUNA_TRIAL_TAG):]) for t in run.tags if t.startswith(OPTUNA_TRIAL_TAG)), None)
        if number is not None:
            newest[number] = run
    unfinished = []
    for number, run in sorted(newest.items()):
        params = {name: _param_value(dist, spec_value(run.spec, name)) for name, dist in space.items()}
        if run.status not in TERMINAL_STATUSES:
            unfinished.append((run.id, number, params))
            continue
        values = objective_values(db, sweep, run.id)
        state = TrialState.COMPLETE if values is not None else TrialState.FAIL
        try:
            study.add_trial(optuna.trial.create_trial(state=state, values=values, params=params,
                                                      distributions=space))
        except ValueError as exc:  # its spec no longer maps onto the space (e.g. a value coerced by the spec)
            log.warning("sweep child %s: not told to optuna (%s)", run.id, exc)
    return sorted(newest), unfinished


def _param_value(dist: Any, value: Any) -> Any:
    """A value read from a child's spec, as the distribution's own type (0.0 for the choice 0, 3 for 3.0)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return next((c for c in dist.choices
                     if c == value and isinstance(c, bool) == isinstance(value, bool)), value)
    if isinstance(dist, IntDistribution):
        return int(value)
    return float(value)
