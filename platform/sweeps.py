"""Sweeps: expand a sweep spec into child job specs, run them with a concurrency limit, rank the results.

Children go through the same submission path as `bitsmith submit` (so repeats are cache hits) and carry
the sweep's id. `create_sweep` resolves every input ref the children use once and stores the digests with
the sweep; children (also on resume) run on those digests, never on what a name points at later. A sweep
is resumable from the store alone: `run_sweep` re-expands the stored spec and runs every combination that
has no succeeded child yet. The adaptive `optuna` strategy picks its
children while it runs; its loop lives in `sweep_optuna`.
"""
from __future__ import annotations

import ast
import itertools
import logging
import math
import random
from dataclasses import dataclass
from typing import Any, Callable

from . import store
from .config import Settings
from .store.records import QUEUED, RUNNING, SUCCEEDED, TERMINAL_STATUSES
from .errors import SpecError
from .specs import JobSpecBase, apply_overrides, parse_spec
from .specs.sweep import RandomParam, SweepSpec

log = logging.getLogger(__name__)
_COMPARE = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
            ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
            ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_ARITH = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
          ast.Div: lambda a, b: a / b, ast.Mod: lambda a, b: a % b}
MAX_CONSTRAINT_CHARS = 1_000  # a constraint's length (bounds nesting and the size of its literals)
MAX_SEQUENCE = 10_000  # items a repeated string or list in a constraint may have
MAX_CHILDREN = 10_000  # combinations a grid or random sweep may expand to


def load_sweep_spec(data: dict[str, Any], source: str = "sweep") -> SweepSpec:
    from pydantic import ValidationError

    from .specs import check_spec_storable, format_validation_error

    try:
        sweep = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None
    check_spec_storable(sweep.model_dump(), source)
    return sweep


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _shown(expression: str) -> str:
    """The constraint as error messages quote it (long ones cut)."""
    return repr(expression if len(expression) <= 80 else expression[:80] + "...")


def check_constraint(expression: str, params: dict[str, Any]) -> bool:
    """Evaluate a constraint over parameter values (comparisons, and/or/not, + - * / %, literals only).

    Any failure (division by zero, a type error, a result too large, nesting too deep) is a `SpecError`
    naming the constraint and the parameter values.
    """
    if len(expression) > MAX_CONSTRAINT_CHARS:
        raise SpecError(f"constraints: {_shown(expression)} has {len(expression)} characters; expected at most "
                        f"{MAX_CONSTRAINT_CHARS}")
    try:
        return _evaluate_constraint(expression, params)
    except (ArithmeticError, TypeError, ValueError, RecursionError, MemoryError) as exc:
        raise SpecError(f"constraints: {_shown(expression)} fails for {params}: {type(exc).__name__}: {exc}; "
                        "expected an expression that evaluates to true or false") from None


def _arithmetic(op: ast.operator, left: Any, right: Any) -> Any:
    """`left op right`, refusing %-formatting of strings and repeated sequences above MAX_SEQUENCE items."""
    if isinstance(op, ast.Mod) and isinstance(left, str):
        raise TypeError("string formatting with % is not allowed")
    if isinstance(op, ast.Mult) and isinstance(left, (str, list)) != isinstance(right, (str, list)):
        seq, times = (left, right) if isinstance(left, (str, list)) else (right, left)
        if isinstance(times, int) and len(seq) * times > MAX_SEQUENCE:
            raise ValueError(f"repeating a sequence {times} times gives more than {MAX_SEQUENCE} items")
    return _ARITH[type(op)](left, right)


def _evaluate_constraint(expression: str, params: dict[str, Any]) -> bool:
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise SpecError(f"constraints: {_shown(expression)} is not an expression ({exc.msg})") from None

    def ev(node: ast.AST) -> Any:
        name = _dotted(node)
        if name is not None:
            if name not in params:
                raise SpecError(f"constraints: {_shown(expression)} names {name!r}; expected one of {sorted(params)}")
            return params[name]
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Tuple, ast.List)):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.BoolOp):
            values = (ev(v) for v in node.values)
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not ev(node.operand)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            return _arithmetic(node.op, ev(node.left), ev(node.right))
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp)
                if type(op) not in _COMPARE or not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        raise SpecError(f"constraints: {_shown(expression)}: {type(node).__name__} is not allowed; expected "
                        "comparisons, and/or/not, arithmetic, parameter names and literals")

    return bool(ev(tree))


OPTUNA_TRIAL_TAG = "optuna-trial:"  # + the trial's number: a tag on every child of an optuna sweep


def expand(sweep: SweepSpec) -> list[dict[str, Any]]:
    """The parameter combinations of a sweep, in a stable order, constraints applied.

    Optuna picks its combinations while the sweep runs; for it this is one representative combination
    (each parameter's first value or low bound) that checks the base spec and the constraints' names.
    """
    names = list(sweep.parameters)
    if sweep.strategy == "optuna":
        combo = {name: _first(param) for name, param in sweep.parameters.items()}
        for expr in sweep.constraints:
            check_constraint(expr, combo)  # raises on unknown names; the representative may still be infeasible
        return [combo]
    check_expandable(sweep)
    if sweep.strategy == "grid":
        combos = [dict(zip(names, values)) for values in itertools.product(*sweep.parameters.values())]
    elif sweep.strategy == "zip":
        combos = [dict(zip(names, values)) for values in zip(*sweep.parameters.values())]
    else:
        rng = random.Random(sweep.seed)
        combos = [{name: _sample(param, rng) for name, param in sweep.parameters.items()}  # type: ignore[arg-type]
                  for _ in range(sweep.samples or 0)]
    return [c for c in combos if all(check_constraint(expr, c) for expr in sweep.constraints)]


def check_expandable(sweep: SweepSpec) -> None:
    """Refuse, before expanding anything, a grid or random sweep of more than MAX_CHILDREN combinations."""
    if sweep.strategy == "grid":
        sizes = [len(values) for values in sweep.parameters.values()]  # type: ignore[arg-type]
        count = math.prod(sizes)
        if count > MAX_CHILDREN:
            raise SpecError(f"parameters: a grid of {count} combinations ({' x '.join(map(str, sizes))}); "
                            f"expected at most {MAX_CHILDREN} children (split the sweep or use strategy random)")
    elif sweep.strategy == "random" and (sweep.samples or 0) > MAX_CHILDREN:
        raise SpecError(f"samples: {sweep.samples}; expected at most {MAX_CHILDREN} children")


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
    data = apply_overrides(sweep.base, [f"{k}={_override_value(v)}" for k, v in params.items()])
    if sweep.name and "name" not in params:
        data["name"] = f"{sweep.name}-{index:04d}"
    if sweep.strategy == "optuna":  # each trial its own run row, so repeats of one config stay separate trials
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
    refs = {ref for _, spec in child_specs(sweep) for ref in spec.input_refs().values()}
    for path, param in sweep.parameters.items():
        if path.startswith("inputs."):
            values = (param.choices or ()) if isinstance(param, RandomParam) else param
            refs.update(_strings(values))
    return refs


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _strings(item)]
    return []


def create_sweep(db: Any, sweep: SweepSpec) -> store.SweepRecord:
    """Record the sweep with its input refs resolved now (ref -> digest); a bad ref is a SpecError naming it."""
    from .errors import UsageError

    pinned: dict[str, str] = {}
    for ref in sorted(sweep_input_refs(sweep)):
        try:
            pinned[ref] = store.resolve_artifact_ref(db, ref).digest
        except UsageError as exc:
            raise SpecError(f"sweep input {ref!r}: {exc.message}", hint="bitsmith artifacts list") from None
    return store.create_sweep(db, name=sweep.name, spec=sweep.model_dump(mode="json"), resolved_inputs=pinned)


def _override_value(value: Any) -> str:
    import json

    return json.dumps(value)


@dataclass(frozen=True)
class SweepRow:
    run_id: str
    params: dict[str, Any]
    status: str
    metrics: dict[str, float]
    pareto: bool = False


def run_sweep(sweep_id: str, settings: Settings, *, executor: str = "ray", no_cache: bool = False,
              on_finish: Callable[[str, str], None] | None = None) -> dict[str, str]:
    """Run every combination of the sweep that has no succeeded child yet; returns run id -> final status.

    On resume, children are taken from the store as they are: a queued child is dispatched as it is, a
    running child whose lease ran out (its submitter, worker or node died) is re-queued or failed by its
    retries, and a running child that still holds its lease is waited for (another process runs it).
    Only combinations without a child, or whose child failed or was cancelled, get a new run.
    """
    from .provenance import code_version
    from .scheduler.ray_executor import EXECUTORS
    from .scheduler.submit import record_submission, resolve_inputs
    from .specs import spec_hash

    db = store.open_database(settings.db_url)
    record = store.get_sweep(db, sweep_id)
    sweep = load_sweep_spec(record.spec, source=f"sweep {record.id}")
    for outcome in store.recover_expired(db, run_ids=record.run_ids):
        log.warning("sweep %s: child %s: %s", record.id[:10], outcome.run.id[:10], outcome.reason)
    if sweep.strategy == "optuna":
        from .sweep_optuna import run_optuna_sweep
        return run_optuna_sweep(record.id, settings, executor=executor, no_cache=no_cache, on_finish=on_finish)
    newest = {run.spec_hash: run for run in sorted((store.get_run(db, rid) for rid in record.run_ids),
                                                   key=lambda r: r.created_at)}
    code = code_version()

    pinned = record.resolved_inputs  # None: a sweep recorded before pinning (its refs resolve now)

    def submit(spec: JobSpecBase) -> str | None:
        sub = record_submission(db, spec, code=code, executor=executor, no_cache=no_cache, sweep_id=record.id,
                                pinned=pinned)
        return None if sub.cache_hit else sub.run.id

    pending: list[str] = []
    elsewhere: dict[str, JobSpecBase] = {}
    for _, spec in child_specs(sweep):
        child = newest.get(spec_hash(spec.with_resolved_inputs(resolve_inputs(db, spec, pinned))))
        if child is not None and child.status == SUCCEEDED:
            continue
        if child is not None and child.status == QUEUED:
            pending.append(child.id)
        elif child is not None and child.status == RUNNING:
            elsewhere[child.id] = spec
        elif (run_id := submit(spec)) is not None:
            pending.append(run_id)
    store.set_sweep_status(db, record.id, "running")

    def run_batch(run_ids: list[str]) -> dict[str, str]:
        return EXECUTORS[executor](run_ids, settings, on_finish=on_finish, max_in_flight=sweep.max_concurrency)

    finals = run_batch(pending)
    if elsewhere:
        finals.update(_wait_for_children(db, list(elsewhere), run_batch, on_finish))
        again = [run_id for old, spec in elsewhere.items()  # lost for good while we waited: run anew
                 if finals.get(old) != SUCCEEDED and (run_id := submit(spec)) is not None]
        if again:
            finals.update(run_batch(again))
    _, rows = sweep_results(db, record.id)
    store.set_sweep_status(db, record.id, "succeeded" if all(r.status == SUCCEEDED for r in rows) else "failed")
    return finals


def _wait_for_children(db: Any, run_ids: list[str], run_batch: Callable[[list[str]], dict[str, str]],
                       on_finish: Callable[[str, str], None] | None, poll_s: float = 1.0) -> dict[str, str]:
    """Wait for children another process runs; run those whose lease runs out and get re-queued."""
    import time

    finals: dict[str, str] = {}
    waiting = set(run_ids)
    if waiting:
        log.warning("waiting for %d running children held by other processes (their leases)", len(waiting))
    while waiting:
        for outcome in store.recover_expired(db, run_ids=sorted(waiting)):
            log.warning("child %s: %s", outcome.run.id[:10], outcome.reason)
        requeued = []
        for run_id in sorted(waiting):
            run = store.get_run(db, run_id)
            if run.status == QUEUED:
                requeued.append(run_id)
            elif run.status in TERMINAL_STATUSES:
                finals[run_id] = run.status
                waiting.discard(run_id)
                if on_finish:
                    on_finish(run_id, run.status)
        if requeued:
            finals.update(run_batch(requeued))
            waiting.difference_update(requeued)
        elif waiting:
            time.sleep(poll_s)
    return finals


def sweep_results(db: Any, sweep_id: str) -> tuple[SweepSpec, list[SweepRow]]:
    """One row per parameter combination (its newest child), sorted by the first objective, Pareto marked."""
    record = store.get_sweep(db, sweep_id)
    sweep = load_sweep_spec(record.spec, source=f"sweep {record.id}")
    runs = sorted(store.list_runs(db, sweep_id=record.id, limit=None), key=lambda r: (r.created_at, r.id))
    by_hash = {r.spec_hash: r for r in runs}  # newest child per combination wins
    finals = store.final_metrics(db, [r.id for r in by_hash.values()])
    rows = [SweepRow(r.id, {p: _at(r.spec, p) for p in sweep.parameters}, r.status, finals.get(r.id, {}))
            for r in by_hash.values()]
    objectives = [(o.metric, 1.0 if o.goal == "min" else -1.0) for o in sweep.objectives]
    if objectives:
        def key(row: SweepRow) -> tuple[float, ...]:
            return tuple(sign * row.metrics.get(m, math.inf * sign) if row.status == "succeeded" else math.inf
                         for m, sign in objectives)

        scored = [r for r in rows if r.status == "succeeded" and all(m in r.metrics for m, _ in objectives)]
        front = {scored[i].run_id for i in pareto_front([key(r) for r in scored])}
        rows = sorted((SweepRow(r.run_id, r.params, r.status, r.metrics, r.run_id in front) for r in rows), key=key)
    return sweep, rows


def _at(data: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        data = data.get(part) if isinstance(data, dict) else None  # type: ignore[assignment]
    return data


def pareto_front(points: list[tuple[float, ...]]) -> list[int]:
    """Indices of the points no other point dominates (all objectives minimised).

    In lexicographic order a point can only be dominated by one before it, and then also by one already on
    the front (dominance is transitive), so each point is compared with the front only.
    """
    front: list[int] = []
    for i in sorted(range(len(points)), key=points.__getitem__):
        if not any(_dominates(points[j], points[i]) for j in front):
            front.append(i)
    return front


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))
