"""`bitsmith sweep run|status|show|resume`."""
from __future__ import annotations

from pathlib import Path

import click

from .common import (emit_json, executor_option, fmt_value, info, json_option, literal, no_cache_option, open_db,
                     settings_from, short, status_text, stdout_console)


@click.group()
def sweep() -> None:
    """Grids, random samples, zips or Optuna searches of job specs, run concurrently and ranked by objectives."""


@sweep.command("run")
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a sweep field")
@executor_option()
@no_cache_option("run every child even if an identical run already succeeded (no cache hits, no joining)")
@click.option("--detach", is_flag=True, help="queue the children for the store's dispatcher (it keeps max_concurrency) "
                                             "and return at once; follow with `bitsmith sweep status`")
@json_option
@click.pass_context
def run_sweep_cmd(ctx: click.Context, sweep_file: Path, overrides: tuple[str, ...], executor: str, no_cache: bool,
                  detach: bool, as_json: bool) -> None:
    """Validate every child, record the sweep, run its children (the sweep id is printed first)."""
    import contextlib
    import sys

    from ..specs import apply_overrides, read_spec_file
    from ..sweeps import child_specs, create_sweep, describe_plan, load_sweep_spec, run_sweep

    data = apply_overrides(read_spec_file(sweep_file), overrides)
    spec = load_sweep_spec(data, source=str(sweep_file))
    children = child_specs(spec)  # every child validated before anything is written (optuna: a representative)
    plan = describe_plan(spec, len(children))
    if detach:  # refused before anything is written
        from ..sweeps.driver import check_detachable

        check_detachable(spec, executor, str(sweep_file))
    db = open_db(ctx)
    from ..output_refs import check_store_references
    from ..sweeps.expand import sweep_input_fields
    from ..task_files import import_base_task_files

    # a ref naming a run in the store names an output its kind declares, before anything is written
    check_store_references(db, [(f"{sweep_file}: {field}", ref) for field, ref in sweep_input_fields(spec)])

    spec = spec.model_copy(update={"base": import_base_task_files(db, settings_from(ctx), spec.base)})
    record = create_sweep(db, spec)  # its input refs resolved now: children and resumes use these digests
    info(f"sweep {record.id}: {plan}, at most {spec.max_concurrency} at once "
         f"(resume with: bitsmith sweep resume {record.id[:10]})")
    if not as_json:
        click.echo(record.id)
    with contextlib.redirect_stdout(sys.stderr):
        run_sweep(record.id, settings_from(ctx), executor=executor, no_cache=no_cache, detach=detach,
                  on_finish=lambda rid, status: info(f"  child {short(rid, 10)}: {status}"))
        if not detach:
            _end_embedded_ray(ctx, executor)
    _show(ctx, record.id, as_json=as_json, plot=None)


def _end_embedded_ray(ctx: click.Context, executor: str) -> None:
    """Flush and stop the embedded Ray instance before results go to stdout."""
    if executor == "ray" and not settings_from(ctx).ray_address:
        import ray

        ray.shutdown()


@sweep.command("resume")
@click.argument("sweep_ref")
@executor_option()
@json_option
@click.pass_context
def resume_sweep_cmd(ctx: click.Context, sweep_ref: str, executor: str, as_json: bool) -> None:
    """Continue a sweep from the store: run every combination without a succeeded child (optuna: up to its trials)."""
    import contextlib
    import sys

    from .. import store
    from ..sweeps import run_sweep

    record = store.get_sweep(open_db(ctx), sweep_ref)
    with contextlib.redirect_stdout(sys.stderr):
        finals = run_sweep(record.id, settings_from(ctx), executor=executor,
                           on_finish=lambda rid, status: info(f"  child {short(rid, 10)}: {status}"))
        _end_embedded_ray(ctx, executor)
    info(f"sweep {record.id}: {len(finals)} children ran on resume")
    _show(ctx, record.id, as_json=as_json, plot=None)


@sweep.command("status")
@click.argument("sweep_ref")
@click.option("--watch", is_flag=True, help="refresh until every child has finished")
@click.pass_context
def status_cmd(ctx: click.Context, sweep_ref: str, watch: bool) -> None:
    """The children of a sweep and their statuses (live with --watch)."""
    import time

    from rich.live import Live
    from rich.table import Table

    from .. import store
    from .common import fmt_duration

    db = open_db(ctx)
    record = store.get_sweep(db, sweep_ref)

    def table() -> tuple[Table, bool]:
        rec = store.get_sweep(db, record.id)
        t = Table(title=f"sweep {rec.id[:12]} {literal(rec.name or '')} ({rec.status})")
        for col in ("run", "name", "status", "took"):
            t.add_column(col)
        finished = True
        for rid in rec.run_ids:
            r = store.get_run(db, rid)
            finished &= r.status in ("succeeded", "failed", "cancelled")
            t.add_row(short(r.id, 10), literal(r.name or ""), status_text(r.status)
                      + (" (cache hit)" if r.cache_hit_of else ""), fmt_duration(r))
        return t, finished

    if not watch:
        stdout_console().print(table()[0])
        return
    with Live(console=stdout_console(), refresh_per_second=1) as live:
        while True:
            t, finished = table()
            live.update(t)
            if finished:
                return
            time.sleep(1.0)


@sweep.command("show")
@click.argument("sweep_ref")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write a PNG of the first two objectives with the Pareto front marked")
@json_option
@click.pass_context
def show_cmd(ctx: click.Context, sweep_ref: str, plot: Path | None, as_json: bool) -> None:
    """Results sorted by the first objective, Pareto front (over all objectives) marked with *."""
    _show(ctx, sweep_ref, as_json=as_json, plot=plot)


def _show(ctx: click.Context, sweep_ref: str, *, as_json: bool, plot: Path | None) -> None:
    from rich.table import Table

    from ..sweeps import plot_objectives, sweep_results

    db = open_db(ctx)
    spec, rows = sweep_results(db, sweep_ref)
    if as_json:
        emit_json({"objectives": [o.model_dump() for o in spec.objectives], "rows": rows})
    else:
        t = Table()
        t.add_column("")
        t.add_column("run")
        for p in spec.parameters:
            t.add_column(literal(p))
        t.add_column("status")
        metrics = [o.metric for o in spec.objectives]
        for m in metrics:
            t.add_column(literal(m), justify="right")
        for r in rows:
            t.add_row("*" if r.pareto else "", short(r.run_id, 10),
                      *[literal(r.params.get(p)) for p in spec.parameters], status_text(r.status),
                      *[fmt_value(r.metrics[m]) if m in r.metrics else "-" for m in metrics])
        stdout_console().print(t)
        if metrics:
            info("* = on the Pareto front of " + ", ".join(f"{o.metric} ({o.goal})" for o in spec.objectives))
    if plot is not None:
        plot_objectives(spec, rows, plot)
        info(f"wrote {plot}")

