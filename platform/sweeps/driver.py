"""Sweep driver: record a sweep with its inputs pinned, then run (or resume) it from the store.

Children go through the same submission path as `bitsmith submit` (so repeats are cache hits) and carry
the sweep's id. `create_sweep` resolves every input ref the children use once and stores the digests with
the sweep; children (also on resume) run on those digests, never on what a name points at later. A sweep
is resumable from the store alone: `run_sweep` recovers children whose lease ran out, then hands the sweep
to its strategy's runner (`RUNNERS`): the expanded strategies (grid, zip, random) run every combination that
has no succeeded child yet; optuna asks for its children while it runs (`sweeps.optuna`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from .. import store
from ..config import Settings
from ..errors import SpecError, UsageError
from ..specs import JobSpecBase, spec_hash
from ..specs.sweep import GridStrategy, OptunaStrategy, RandomStrategy, SweepSpec, ZipStrategy
from ..store.records import QUEUED, RUNNING, SUCCEEDED, TERMINAL_STATUSES
from . import optuna
from .expand import child_specs, load_sweep_spec, sweep_input_refs
from .results import sweep_results

log = logging.getLogger(__name__)
OnFinish = Callable[[str, str], None]


def create_sweep(db: Any, sweep: SweepSpec) -> store.SweepRecord:
    """Record the sweep with its input refs resolved now (ref -> digest); a bad ref is a SpecError naming it."""
    pinned: dict[str, str] = {}
    for ref in sorted(sweep_input_refs(sweep)):
        try:
            pinned[ref] = store.resolve_artifact_ref(db, ref).digest
        except UsageError as exc:
            raise SpecError(f"sweep input {ref!r}: {exc.message}", hint="bitsmith artifacts list") from None
    return store.create_sweep(db, name=sweep.name, spec=sweep.model_dump(mode="json"), resolved_inputs=pinned)


def run_sweep(sweep_id: str, settings: Settings, *, executor: str = "ray", no_cache: bool = False,
              on_finish: OnFinish | None = None, detach: bool = False) -> dict[str, str]:
    """Run (or resume) the sweep with its strategy's runner; returns run id -> final status of what ran.

    With `detach` (expanded strategies on Ray) the children only join the store's queue and this returns at
    once: the store's dispatcher runs them, holds the sweep to its `max_concurrency` and records the sweep's
    status when its last child ends.

    Children whose lease ran out (their submitter, worker or node died) are first re-queued or failed by
    their retries, so the runner finds each child as it really is.
    """
    db = store.open_database(settings.db_url)
    record = store.get_sweep(db, sweep_id)
    sweep = load_sweep_spec(record.spec, source=f"sweep {record.id}")
    for outcome in store.recover_expired(db, run_ids=record.run_ids):
        log.warning("sweep %s: child %s: %s", record.id[:10], outcome.run.id[:10], outcome.reason)
    if detach:
        check_detachable(sweep, executor, f"sweep {record.id}")
        return run_expanded_sweep(record.id, settings, executor=executor, no_cache=no_cache, detach=True)
    return RUNNERS[type(sweep.strategy)].run(record.id, settings, executor=executor, no_cache=no_cache,
                                             on_finish=on_finish)


def check_detachable(sweep: SweepSpec, executor: str, where: str) -> None:
    """Only the children of an expanded sweep on the Ray executor can be queued for the dispatcher (--detach)."""
    if RUNNERS[type(sweep.strategy)] is not _EXPANDED or executor != "ray":
        raise UsageError(f"{where}: --detach queues the children of a grid, zip or random sweep on the ray executor; "
                         f"expected one (this is a {sweep.strategy.type} sweep on {executor}); run it without --detach")


def describe_plan(sweep: SweepSpec, children: int) -> str:
    """What `sweep run` is about to do, e.g. '6 children' (optuna: also checks that the extra is installed)."""
    return RUNNERS[type(sweep.strategy)].plan(sweep, children)


def run_expanded_sweep(sweep_id: str, settings: Settings, *, executor: str = "ray", no_cache: bool = False,
                       on_finish: OnFinish | None = None, detach: bool = False) -> dict[str, str]:
    """Run every combination of the sweep that has no succeeded child yet; returns run id -> final status.

    On resume, children are taken from the store as they are: a queued child is dispatched as it is, a
    running child whose lease ran out is re-queued or failed by its retries (see `run_sweep`), and a running
    child that still holds its lease is waited for (another process runs it). Only combinations without a
    child, or whose child failed or was cancelled, get a new run.
    """
    from ..provenance import code_version
    from ..scheduler.ray_executor import EXECUTORS
    from ..scheduler.submit import record_submission, resolve_inputs

    db = store.open_database(settings.db_url)
    record = store.get_sweep(db, sweep_id)
    sweep = load_sweep_spec(record.spec, source=f"sweep {record.id}")
    newest = {run.spec_hash: run for run in sorted((store.get_run(db, rid) for rid in record.run_ids),
                                                   key=lambda r: r.created_at)}
    code = code_version()

    pinned = record.resolved_inputs  # None: a sweep recorded before pinning (its refs resolve now)

    def submit(spec: JobSpecBase) -> str | None:
        sub = record_submission(db, spec, code=code, executor=executor, no_cache=no_cache, sweep_id=record.id,
                                pinned=pinned, to_queue=detach)
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
    if detach:  # queued children (also those found queued on resume) wait for the store's dispatcher
        from ..scheduler.daemon import ensure_dispatcher

        ensure_dispatcher(settings, db)
        return {}

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
                       on_finish: OnFinish | None, poll_s: float = 1.0) -> dict[str, str]:
    """Wait for children another process runs; run those whose lease runs out and get re-queued."""
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


def _expanded_plan(sweep: SweepSpec, children: int) -> str:
    return f"{children} children"


@dataclass(frozen=True)
class Runner:
    """How a strategy runs: `run(sweep_id, settings, executor=, no_cache=, on_finish=)` and its plan line."""

    run: Callable[..., dict[str, str]]
    plan: Callable[[SweepSpec, int], str]


_EXPANDED = Runner(run_expanded_sweep, _expanded_plan)
RUNNERS: dict[type, Runner] = {GridStrategy: _EXPANDED, ZipStrategy: _EXPANDED, RandomStrategy: _EXPANDED,
                               OptunaStrategy: Runner(optuna.run_optuna_sweep, optuna.describe_plan)}
