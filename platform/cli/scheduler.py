"""`bitsmith scheduler start|stop|status` (the store's dispatcher) and `bitsmith queue` (what waits, and why)."""
from __future__ import annotations

from typing import Any

import click

from .common import emit_json, info, json_option, open_db, settings_from


@click.group()
def scheduler() -> None:
    """The store's one dispatcher: it admits queued runs onto one Ray instance by priority and resources."""


@scheduler.command("start")
@click.option("--foreground", is_flag=True, help="serve in this process (a terminal or a container) until stopped")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=None,
              help="Ray tasks at once (default 64; bounds runs that ask for no resources)")
@click.option("--num-cpus", type=click.IntRange(min=1), default=None,
              help="CPUs of the embedded Ray instance (default: the machine's; ignored with --address)")
@click.option("--resources", "resources_json", default=None, metavar="JSON",
              help="custom resources of the embedded Ray instance, e.g. '{\"accel\": 1}' (default: "
                   "BITSMITH_RAY_RESOURCES; ignored with --address: a cluster's nodes declare their own)")
@json_option
@click.pass_context
def start_cmd(ctx: click.Context, foreground: bool, max_in_flight: int | None, num_cpus: int | None,
              resources_json: str | None, as_json: bool) -> None:
    """Start the dispatcher (a detached daemon, its log under $BITSMITH_HOME/scheduler/), on the Ray cluster
    at --address / BITSMITH_RAY_ADDRESS or an embedded instance it owns. Refused (exit 2) while another
    dispatcher serves this store."""
    from ..scheduler import daemon
    from ..scheduler.admission import env_node_resources, parse_node_resources
    from ..scheduler.dispatcher import DispatcherOptions, serve
    from ..store import queue

    resources = (parse_node_resources(resources_json, "--resources") if resources_json is not None
                 else env_node_resources())
    settings = settings_from(ctx)
    db = open_db(ctx)
    options = DispatcherOptions(address=settings.ray_address,
                                max_in_flight=max_in_flight or DispatcherOptions.max_in_flight, num_cpus=num_cpus,
                                resources=resources)
    if foreground:
        ctx.exit(serve(settings, options))
    current = queue.get_dispatcher(db)
    if current is not None and current.alive:
        raise queue.busy_error(current)
    pid = daemon.ensure_dispatcher(settings, db, max_in_flight=max_in_flight, num_cpus=num_cpus, resources=resources)
    record = daemon.wait_until_serving(settings, db, pid)
    if as_json:
        emit_json(_status(record))
    else:
        info(f"dispatcher {record.owner} serving on Ray {record.ray_address}; log: {daemon.log_path(settings)}")


@scheduler.command("stop")
@click.option("--now", is_flag=True, help="do not wait for the runs in flight (they are recovered through their "
                                          "leases by the next dispatcher, as after a crash)")
@click.pass_context
def stop_cmd(ctx: click.Context, now: bool) -> None:
    """Stop the dispatcher: no new runs start, the runs in flight finish, queued runs stay queued."""
    from ..scheduler import daemon

    record = daemon.stop_dispatcher(open_db(ctx), force=now)
    info("no dispatcher is serving this store" if record is None else f"dispatcher {record.owner} stopped")


@scheduler.command("status")
@json_option
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """The dispatcher: owner, Ray address, resources total/used/free, runs in flight and queued."""
    from ..store import queue

    db = open_db(ctx)
    record = queue.get_dispatcher(db)
    status = _status(record) if record is not None else {"alive": False, "queued": queue.queue_length(db)}
    if as_json:
        emit_json(status)
        return
    if record is None or not record.alive:
        click.echo(f"no dispatcher serving; {status.get('queued', 0)} runs queued "
                   "(`bitsmith scheduler start`, or any `bitsmith submit`, starts one)")
        return
    state = record.state
    click.echo(f"dispatcher  {record.owner} (since {record.started_at.isoformat(timespec='seconds')}, "
               f"heartbeat {record.heartbeat_at.isoformat(timespec='seconds')})")
    click.echo(f"ray         {record.ray_address} ({'embedded' if state.get('embedded') else 'joined'})")
    for name in ("total", "used", "free"):
        click.echo(f"{name:<11} {_resources_text(state.get(name, {}))}")
    click.echo(f"in flight   {state.get('in_flight', 0)} of at most {state.get('max_in_flight')}; "
               f"queued {state.get('queued', 0)}; ended since start {state.get('ended', 0)}"
               + ("; stopping" if state.get("stopping") else ""))


def _status(record: Any) -> dict[str, Any]:
    return {"alive": record.alive, "owner": record.owner, "ray_address": record.ray_address,
            "started_at": record.started_at, "heartbeat_at": record.heartbeat_at, **record.state}


def _resources_text(resources: dict[str, float]) -> str:
    from ..scheduler.admission import amount_text, shown

    first = {"CPU": 0, "GPU": 1, "memory": 2}  # then custom resources by name
    ordered = sorted(shown(resources).items(), key=lambda kv: (first.get(kv[0], 3), kv[0]))
    return ", ".join(amount_text(k, v) for k, v in ordered) or "-"


@click.command("queue")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="rows shown")
@json_option
@click.pass_context
def queue_cmd(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Queued runs in dispatch order (priority, then age): position, priority, resources, what each waits for."""
    from ..scheduler.admission import needs_text, run_needs, waiting_reason
    from ..store import queue

    db = open_db(ctx)
    record = queue.get_dispatcher(db)
    alive = record is not None and record.alive
    state = record.state if alive else {}
    free, total, known = dict(state.get("free", {})), state.get("total", {}), state.get("waiting", {})
    rows = []
    for position, run in enumerate(queue.queued_runs(db, limit=limit), start=1):
        needs = run_needs(run.spec)
        if not alive:
            reason = "no dispatcher serving (bitsmith scheduler start)"
        elif not total:
            reason = "the dispatcher is starting"
        elif run.id in known:
            reason = known[run.id]
        else:
            reason = waiting_reason(needs, free, total) or "next to start"
        rows.append({"position": position, "run_id": run.id, "kind": run.kind, "name": run.name,
                     "priority": run.priority, "resources": needs, "created_at": run.created_at,
                     "waiting_for": reason})
    if as_json:
        emit_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    from .common import literal

    table = Table(title=f"queue ({queue.queue_length(db)} runs)")
    for col in ("#", "run", "kind", "name", "priority", "resources", "waiting for"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["position"]), r["run_id"][:10], r["kind"], literal(r["name"] or ""),
                      str(r["priority"]), needs_text(r["resources"]), r["waiting_for"])
    Console().print(table)
