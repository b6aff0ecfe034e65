"""`bitsmith submit` and `bitsmith spec-schema`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from .common import emit_json, executor_option, info, json_option, no_cache_option, open_db, settings_from


@click.command()
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a spec field by dotted path, e.g. --set method.damp_percent=0.05 (repeatable)")
@click.option("--wait/--no-wait", default=False,
              help="run in this process and wait for the result (default: queue it for the store's dispatcher, "
                   "or with --executor local a detached local runner, and return at once)")
@click.option("--priority", type=int, default=0, show_default=True,
              help="queue order: higher runs first, equal priorities oldest first")
@executor_option()
@no_cache_option()
@json_option
@click.pass_context
def submit(ctx: click.Context, spec_file: Path, overrides: tuple[str, ...], wait: bool, priority: int, executor: str,
           no_cache: bool, as_json: bool) -> None:
    """Validate SPEC_FILE, record a run and execute it (or reuse a cached identical run).

    Without --wait (and on the Ray executor) the run only joins the store's queue; the store's dispatcher
    (started now if none serves) runs it when the cluster has the resources it asks for."""
    from ..provenance import code_version
    from ..specs import load_spec
    from ..scheduler.submit import record_submission
    from ..task_files import import_task_files

    spec = load_spec(spec_file, overrides)  # validated once; nothing is written if this fails
    settings = settings_from(ctx)
    db = open_db(ctx)
    spec = import_task_files(db, settings, spec)  # local task files become artifacts (cache key, lineage)
    queued = not wait and executor == "ray"
    sub = record_submission(db, spec, code=code_version(), executor=executor, no_cache=no_cache, priority=priority,
                            to_queue=queued)
    run = sub.run
    if run.joins:
        info(f"run {run.id} joins identical in-flight run {run.joins}: it waits for it and becomes its cache hit "
             "(--no-cache to run it anyway)")
    if sub.cache_hit:
        info(f"cache hit: run {run.id} reuses the outputs of succeeded run {run.cache_hit_of} "
             f"(same spec, inputs and code; --no-cache to rerun)")
    elif wait:
        status = execute_and_wait([run.id], settings, executor)[run.id]
        if not as_json:
            info(f"run {run.id} {status}")
    elif queued:
        from ..scheduler.daemon import ensure_dispatcher, log_path

        pid = ensure_dispatcher(settings, db)
        started = f"; started the dispatcher (pid {pid}, log {log_path(settings)})" if pid else ""
        info(f"queued run {run.id} ({run.kind}, priority {priority}){started}; see: bitsmith queue")
    else:
        spawn_runner([run.id], settings, executor)
        info(f"submitted run {run.id} ({run.kind}) to a detached {executor} runner")
    result = run_summary(db, run.id)
    if as_json:
        emit_json(result)
    else:
        click.echo(run.id)
        if result["status"] in ("succeeded",) and result["metrics"]:
            for key, value in sorted(result["metrics"].items()):
                info(f"  {key} = {value:.6g}")
        info(f"next: bitsmith runs show {run.id[:10]}   bitsmith runs logs {run.id[:10]} -f   "
             f"bitsmith lineage run:{run.id[:10]}")
    if result["status"] in ("failed", "cancelled"):
        if result.get("error"):
            info(f"error: {result['error']}")
        sys.exit(1)


def run_summary(db: Any, run_id: str) -> dict[str, Any]:
    from .. import store

    run = store.get_run(db, run_id)
    return {"run_id": run.id, "kind": run.kind, "name": run.name, "status": run.status,
            "cache_hit": run.cache_hit_of is not None, "cache_hit_of": run.cache_hit_of,
            "outputs": {e.role: e.digest for e in store.run_outputs(db, run.id)},
            "metrics": store.final_metrics(db, [run.id]).get(run.id, {}), "error": run.error}


def execute_and_wait(run_ids: list[str], settings: Any, executor: str) -> dict[str, str]:
    """Run in this process (local) or on Ray from this process; stdout stays clean for data (--json)."""
    import contextlib

    from ..scheduler.ray_executor import EXECUTORS

    with contextlib.redirect_stdout(sys.stderr):
        try:
            return EXECUTORS[executor](run_ids, settings)
        finally:
            if executor == "ray" and not settings.ray_address:
                import ray

                ray.shutdown()  # the embedded instance ends with this command; flush its messages now


def spawn_runner(run_ids: list[str], settings: Any, executor: str) -> int:
    """Start a detached runner that owns the runs until they finish (their dispatch lease is handed to it at
    once, so they are orphans as soon as it dies); returns its PID."""
    log_path = settings.runs_dir / run_ids[0] / "runner.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bitsmith.platform.scheduler.runner", "--executor", executor, *run_ids]
    if settings.ray_address:
        cmd[4:4] = ["--address", settings.ray_address]
    env = {**os.environ, **settings.env(), "BITSMITH_NO_PROGRESS": "1"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    from .. import store

    store.hold_dispatch(store.open_database(settings.db_url), run_ids, owner=store.lease_owner(pid=proc.pid),
                        lease_s=settings.lease_s)
    return proc.pid


@click.command("spec-schema")
@click.argument("kind")
def spec_schema(kind: str) -> None:
    """Print the JSON schema of KIND's spec (every field, type, default and description) and, under
    `x-outputs`, the outputs a KIND job declares (role, artifact kind, required); a summary goes to stderr."""
    from ..errors import UsageError
    from ..specs import JOB_KIND_TABLE

    if kind not in JOB_KIND_TABLE:
        raise UsageError(f"spec-schema {kind!r}: unknown job kind; expected one of {', '.join(JOB_KIND_TABLE)}")
    entry = JOB_KIND_TABLE[kind]
    schema = {**entry.spec.model_json_schema(), "x-outputs": [o.describe() for o in entry.outputs]}
    click.echo(json.dumps(schema, indent=2))
    info(f"outputs a {kind} job declares:")
    for out in entry.outputs:
        when = "recorded while running" if out.via_context else "returned"
        info(f"  {out.role:<20} {out.kind:<26} {'required' if out.required else 'optional'}, {when}")
