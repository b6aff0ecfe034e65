"""`bitsmith reproduce RUN_ID`: rerun a stored spec on the same inputs and seed, then compare."""
from __future__ import annotations

import sys
from typing import Any

import click

from .common import (emit_json, executor_option, fmt_value, info, json_option, literal, open_db, settings_from, short,
                     stdout_console)
from .submit import execute_and_wait


@click.command()
@click.argument("run_ref")
@executor_option()
@click.option("--rel-tol", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="metrics within this relative difference count as equal")
@json_option
@click.pass_context
def reproduce(ctx: click.Context, run_ref: str, executor: str, rel_tol: float, as_json: bool) -> None:
    """Resubmit RUN_REF's resolved spec (same inputs, same seed, no cache) and report match or drift."""
    from rich.table import Table

    from .. import store
    from ..errors import UsageError
    from ..provenance import code_version
    from ..reproduce import compare_runs
    from ..scheduler.submit import record_submission

    db = open_db(ctx)
    original = store.get_run(db, run_ref)
    if original.cache_hit_of:
        original = store.get_run(db, original.cache_hit_of)
    if original.status != "succeeded":
        raise UsageError(f"reproduce {run_ref}: run {original.id} is {original.status}; expected a succeeded run",
                         hint="bitsmith runs list --status succeeded")
    spec = stored_spec(original)
    sub = record_submission(db, spec, code=code_version(), executor=executor, no_cache=True)
    info(f"reproducing run {original.id} as run {sub.run.id} ...")
    execute_and_wait([sub.run.id], settings_from(ctx), executor)
    repro = store.get_run(db, sub.run.id)

    def outputs(run_id: str) -> dict[str, tuple[str, str]]:
        return {e.role: (e.digest, store.get_artifact(db, e.digest).kind) for e in store.run_outputs(db, run_id)
                if not e.role.startswith("checkpoint/")}

    finals = store.final_metrics(db, [original.id, repro.id])
    report = compare_runs(original, repro, outputs(original.id), outputs(repro.id),
                          finals.get(original.id, {}), finals.get(repro.id, {}), rel_tol=rel_tol)
    if as_json:
        emit_json({**report.__dict__, "matches": report.matches})
    else:
        con = stdout_console()
        verdict = "[green]MATCH[/]" if report.matches else "[red]DRIFT[/]"
        con.print(f"{verdict}: run {short(repro.id)} reproduces run {short(original.id)}"
                  if report.matches else f"{verdict}: run {short(repro.id)} differs from run {short(original.id)}"
                  f" (status {repro.status})")
        t = Table(title="outputs", title_justify="left")
        for c in ("role", "kind", "original", "reproduced", ""):
            t.add_column(c)
        for o in report.outputs:
            mark = "same" if o["same"] else ("differs (volatile: timings)" if o["volatile"] else "[red]DIFFERS[/]")
            t.add_row(literal(o["role"]), literal(o["kind"]), short(o["original"]), short(o["reproduced"]), mark)
        con.print(t)
        t = Table(title="metrics", title_justify="left")
        for c in ("metric", "original", "reproduced", "rel diff", ""):
            t.add_column(c)
        for m in report.metrics:
            mark = "same" if m["same"] else ("volatile" if m["volatile"] else "[red]DIFFERS[/]")
            t.add_row(literal(m["key"]), fmt_value(m["original"]) if m["original"] is not None else "-",
                      fmt_value(m["reproduced"]) if m["reproduced"] is not None else "-",
                      f"{m['rel_diff']:.2e}" if m["rel_diff"] is not None else "-", mark)
        con.print(t)
        if report.environment_diff or report.code_diff:
            con.print("[bold]differences in environment and code[/] (original -> reproduction):")
            for k, (a, b) in {**report.code_diff, **report.environment_diff}.items():
                con.print(literal(f"  {k}: {a} -> {b}"))
        else:
            con.print("environment and code: identical")
        print_changed_modules(con, report.changed_modules)
    if not report.matches:
        sys.exit(1)


def print_changed_modules(con: Any, changed: dict[str, str] | None) -> None:
    """Which modules of the code fingerprint differ between the original and the reproduction."""
    if changed is None:
        con.print("code modules: not compared (a run recorded before code fingerprints)")
    elif changed:
        con.print("[bold]code modules that differ[/] (original -> reproduction):")
        for module, change in changed.items():
            con.print(literal(f"  {module}: {change}"))
    else:
        con.print("code modules: identical")


def stored_spec(run: Any) -> Any:
    """The run's stored spec, parsed; one an older bitsmith wrote in a shape this one no longer reads is a
    `SpecError` that says so (e.g. device/dtype/threads at the top level, now under `compute`)."""
    from ..errors import SpecError
    from ..specs import parse_spec

    try:
        return parse_spec(run.spec, source=f"run {run.id} stored spec")
    except SpecError as exc:
        raise SpecError(f"reproduce: {exc.message}; the run was recorded by a version of bitsmith whose spec "
                        "this version cannot read, so it cannot be rerun as it was",
                        hint=f"bitsmith runs show {run.id} --json (the stored spec), then submit it updated") from None
