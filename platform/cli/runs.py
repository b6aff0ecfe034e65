"""`bitsmith runs list|show|logs|cancel|recover|compare`."""
from __future__ import annotations

import json
import time
from pathlib import Path

import click

from .common import (EXECUTOR_HELP, emit_json, executor_option, fitted_table, fmt_duration, fmt_time, fmt_value, info,
                     json_option, literal, open_db, short, status_text, stdout_console)

# The metric shown in `runs list` for each kind (first one present wins).
HEADLINE_METRICS = {
    "train": ("eval/ppl", "eval/loss"),
    "quantize": ("effective_bits_per_weight", "mean_rel_error"),
    "eval": ("test/token_ppl", "test/word_ppl", "kl", "mc/acc", "gen/exact_match", "gen/pass@1"),
    "rl": ("accuracy/train_after", "reward/mean"),
    "search": ("test/token_ppl", "avg_bits"),
    "noop": ("noop/metrics_logged",),
}


@click.group()
def runs() -> None:
    """Inspect and control runs (IDs may be given by unique prefix)."""


@runs.command("list")
@click.option("--kind", default=None)
@click.option("--status", default=None, type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]))
@click.option("--tag", default=None)
@click.option("--sweep", "sweep_id", default=None)
@click.option("--name", "name_contains", default=None, help="only runs whose name contains this (any case)")
@click.option("--metric", "metric_filters", multiple=True, metavar="EXPR",
              help="a final metric filter, e.g. 'test/token_ppl<50' (repeatable, all must hold)")
@click.option("--sort", default="created_at", show_default=True, metavar="COLUMN|metric:KEY",
              help="created_at, started_at, finished_at, name, kind, status, or metric:KEY (a final metric; "
                   "runs without it are left out)")
@click.option("--order", type=click.Choice(["desc", "asc"]), default="desc", show_default=True)
@click.option("--limit", default=50, show_default=True, type=int, help="rows per page (1 to 500)")
@click.option("--cursor", default=None, help="the next cursor a previous page printed")
@json_option
@click.pass_context
def list_runs(ctx: click.Context, kind: str | None, status: str | None, tag: str | None, sweep_id: str | None,
              name_contains: str | None, metric_filters: tuple[str, ...], sort: str, order: str, limit: int,
              cursor: str | None, as_json: bool) -> None:
    """Newest runs first (or by --sort), one page at a time, with each kind's headline metric.

    The next page's cursor is printed on stderr (`next_cursor: ...`); pass it back with --cursor.
    """
    from .. import store
    from ..store import queries

    db = open_db(ctx)
    page = queries.list_runs(db, kind=kind, status=status, tag=tag, sweep_id=sweep_id, name_contains=name_contains,
                             metric_filters=metric_filters, sort=sort, descending=order == "desc", limit=limit,
                             cursor=cursor)
    records = page.rows
    finals = store.final_metrics(db, [r.id for r in records]) if records else {}
    if as_json:
        emit_json([{**_run_brief(r), "metrics": finals.get(r.id, {})} for r in records])
    else:
        sort_key = sort[len("metric:"):] if sort.startswith("metric:") else None
        rows = []
        for r in records:
            m = finals.get(r.id, {})
            keys = (sort_key,) if sort_key else HEADLINE_METRICS.get(r.kind, ())
            headline = next((f"{k}={fmt_value(m[k])}" for k in keys if k in m), "")
            note = f"cache hit of {short(r.cache_hit_of, 10)}" if r.cache_hit_of else (
                f"attempt {r.attempt}" if r.attempt > 1 else "")
            rows.append([short(r.id, 12), r.kind, literal(r.name or ""), status_text(r.status), literal(headline),
                         fmt_time(r.created_at), fmt_duration(r), note])
        # In a narrow terminal the least useful columns go first, so that names stay readable.
        stdout_console().print(fitted_table(["id", "kind", "name", "status", "headline", "created", "took", "note"],
                                            rows, elastic="name", drop=("created", "note", "took"),
                                            shrink=("headline", "kind")))
        if not records and cursor is None:
            info("no runs yet; try: bitsmith submit examples/noop.yaml --wait")
    if page.next_cursor:
        info(f"next_cursor: {page.next_cursor}")


def _run_brief(r: object) -> dict:
    from .common import to_jsonable

    d = to_jsonable(r)
    d.pop("traceback", None)
    return d


@runs.command("show")
@click.argument("run_ref")
@json_option
@click.pass_context
def show_run(ctx: click.Context, run_ref: str, as_json: bool) -> None:
    """Everything recorded about one run: spec, code, environment, inputs, outputs, metrics, events."""
    from rich.table import Table

    from .. import store

    db = open_db(ctx)
    r = store.get_run(db, run_ref)
    inputs, outputs = store.run_inputs(db, r.id), store.run_outputs(db, r.id)
    finals = store.final_metrics(db, [r.id]).get(r.id, {})
    events = store.run_events(db, r.id)
    if as_json:
        emit_json({"run": r, "inputs": inputs, "outputs": outputs, "metrics": finals, "events": events})
        return
    con = stdout_console()
    con.print(f"[bold]run {r.id}[/]  {r.kind}  {literal(r.name or '')}  {status_text(r.status)}")
    rows = [("created", fmt_time(r.created_at)), ("started", fmt_time(r.started_at)),
            ("finished", fmt_time(r.finished_at)), ("took", fmt_duration(r)), ("attempt", f"{r.attempt} "
            f"(retries allowed: {r.max_retries})"), ("executor", r.executor or "-"), ("host/pid", f"{r.host}/{r.pid}"),
            ("seed", str(r.seed)), ("spec hash", r.spec_hash), ("cache key", r.cache_key),
            ("cache hit of", r.cache_hit_of or "-"), ("code", code_text(r.code_version)),
            ("fingerprint", fingerprint_text(r.code_version)),
            ("tags", ", ".join(r.tags) or "-"), ("log", r.log_path or "-")]
    for k, v in rows:
        con.print(f"  [dim]{k:>12}[/] {literal(v)}")
    if r.error:
        con.print(f"  [red]{'error':>12}[/] {literal(r.error, keep_newlines=True)}")
    if r.environment:
        pk = r.environment.get("packages", {})
        env_line = ", ".join(f"{k} {v}" for k, v in pk.items() if v)
        con.print(f"  [dim]{'environment':>12}[/] " + literal(
            f"python {r.environment.get('python')}, {env_line}, device {r.environment.get('device')}, "
            f"threads {r.environment.get('torch_threads')}"))
    for title, edges in (("inputs", inputs), ("outputs", outputs)):
        if edges:
            t = Table(title=title, title_justify="left")
            t.add_column("role")
            t.add_column("digest")
            for e in edges:
                t.add_row(literal(e.role), e.digest[:16])
            con.print(t)
    if finals:
        t = Table(title="final metrics", title_justify="left")
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k in sorted(finals):
            t.add_row(literal(k), fmt_value(finals[k]))
        con.print(t)
    con.print("events: " + "  ".join(f"{fmt_time(e.at)} {e.from_status or '∅'}→{e.to_status}"
                                     + (f" ({literal(e.message)})" if e.message else "") for e in events))


def code_text(code_version: dict) -> str:
    """A run's code version without the per-module digests (commit, dirty hash, libraries)."""
    return json.dumps({k: v for k, v in code_version.items() if k not in ("fingerprint", "modules")})


def fingerprint_text(code_version: dict) -> str:
    """A run's code fingerprint and how many modules it covers (old runs recorded none)."""
    fingerprint = code_version.get("fingerprint")
    if not fingerprint:
        return "- (recorded before code fingerprints)"
    return f"{fingerprint} ({len(code_version.get('modules') or {})} modules)"


@runs.command("logs")
@click.argument("run_ref")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines until the run ends")
@click.pass_context
def run_logs(ctx: click.Context, run_ref: str, follow: bool) -> None:
    """Print a run's log (stdout, stderr and log records of every attempt)."""
    from .. import store
    from ..errors import NotFoundError
    from ..scheduler.execute import run_log_path
    from ..store.records import TERMINAL_STATUSES
    from .common import settings_from

    db = open_db(ctx)
    r = store.get_run(db, run_ref)
    if r.cache_hit_of:
        info(f"run {r.id} is a cache hit; showing the log of run {r.cache_hit_of}")
        r = store.get_run(db, r.cache_hit_of)
    path = Path(r.log_path) if r.log_path else run_log_path(settings_from(ctx), r.id)
    deadline_missing = time.monotonic() + 30
    while not path.exists():
        if not follow or time.monotonic() > deadline_missing:
            raise NotFoundError(f"run {r.id}: no log at {path}; the run has not started on this machine yet",
                                hint=f"bitsmith runs show {r.id[:10]}")
        time.sleep(0.5)
    with open(path, encoding="utf-8", errors="replace") as f:
        while True:
            chunk = f.read()
            if chunk:
                click.echo(chunk, nl=False)
            if not follow:
                return
            if store.get_run(db, r.id).status in TERMINAL_STATUSES:
                click.echo(f.read(), nl=False)
                return
            time.sleep(0.5)


@runs.command("cancel")
@click.argument("run_refs", nargs=-1, required=True)
@click.pass_context
def cancel_runs(ctx: click.Context, run_refs: tuple[str, ...]) -> None:
    """Ask runs to stop; a queued run is cancelled at once, a running one within seconds."""
    from .. import store
    from ..store.records import CANCELLED, TERMINAL_STATUSES

    db = open_db(ctx)
    for ref in run_refs:
        r = store.get_run(db, ref)
        if r.status in TERMINAL_STATUSES:
            info(f"run {r.id} already {r.status}")
            continue
        after = store.request_cancel(db, r.id)  # a queued run is cancelled at once
        info(f"run {r.id} cancelled" if after.status == CANCELLED else f"cancel requested for run {r.id}")


@runs.command("recover")
@click.argument("run_refs", nargs=-1)
@executor_option("how re-queued and adopted runs are run; " + EXECUTOR_HELP)
@click.option("--wait", is_flag=True, help="run them in this process instead of a detached runner")
@json_option
@click.pass_context
def recover_runs(ctx: click.Context, run_refs: tuple[str, ...], executor: str, wait: bool, as_json: bool) -> None:
    """Re-queue (while retries last) or fail running runs whose lease expired (their worker, node or
    submitting process died), and adopt queued runs whose dispatcher is gone (e.g. a runner killed before
    it claimed them). All such runs, or only RUN_REFS. Re-queued and adopted runs are dispatched again."""
    from .. import store
    from ..scheduler.ray_executor import EXECUTORS
    from .common import settings_from
    from .submit import spawn_runner

    db = open_db(ctx)
    settings = settings_from(ctx)
    ids = [store.get_run(db, ref).id for ref in run_refs] if run_refs else None
    recovered = store.recover_expired(db, run_ids=ids)
    adopted = store.adopt_orphans(db, owner=store.lease_owner(), lease_s=settings.lease_s, run_ids=ids)
    recovered += [store.Recovery(run, store.ledger.ADOPTED, f"queued, but its dispatcher "
                                 f"{run.lease_owner or '(none)'} is gone") for run in adopted]
    for r in recovered:
        info(f"run {r.run.id}: {r.action}: {r.reason}")
    dispatch = [r.run.id for r in recovered if r.action in (store.ledger.REQUEUED, store.ledger.ADOPTED)]
    if not recovered:
        info("no running run has an expired lease and no queued run lost its dispatcher")
    finals: dict[str, str] = {}
    if dispatch and wait:
        finals = EXECUTORS[executor](dispatch, settings)
    elif dispatch and executor == "ray":  # this process's dispatch lease ends with it: the dispatcher takes them
        from ..scheduler.daemon import ensure_dispatcher

        ensure_dispatcher(settings, db)
        info(f"{len(dispatch)} runs handed to the store's queue; follow with: bitsmith queue")
    elif dispatch:
        pid = spawn_runner(dispatch, settings, executor)
        info(f"runs dispatched by runner pid {pid}; follow with: bitsmith runs list --status running")
    if as_json:
        emit_json([{"run_id": r.run.id, "action": r.action, "reason": r.reason,
                    "final_status": finals.get(r.run.id)} for r in recovered])


@runs.command("compare")
@click.argument("run_refs", nargs=-1, required=True)
@click.option("--prefix", default=None, help="only metrics whose name starts with this")
@json_option
@click.pass_context
def compare_runs(ctx: click.Context, run_refs: tuple[str, ...], prefix: str | None, as_json: bool) -> None:
    """Final metrics of several runs side by side."""
    from rich.table import Table

    from .. import store

    db = open_db(ctx)
    records = [store.get_run(db, ref) for ref in run_refs]
    finals = store.final_metrics(db, [r.id for r in records])
    keys = sorted({k for r in records for k in finals.get(r.id, {}) if not prefix or k.startswith(prefix)})
    if as_json:
        emit_json({r.id: {k: finals.get(r.id, {}).get(k) for k in keys} for r in records})
        return
    table = Table()
    table.add_column("metric")
    for r in records:
        table.add_column(f"{short(r.id, 10)}\n{literal(r.name or r.kind)}", justify="right")
    for k in keys:
        table.add_row(literal(k), *[fmt_value(finals[r.id][k]) if k in finals.get(r.id, {}) else "-" for r in records])
    stdout_console().print(table)
