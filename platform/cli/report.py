"""`bitsmith report RUN_OR_SWEEP -o report.html`: a run's or a sweep's web views as one self-contained file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .common import open_db, settings_from


def collect(db: Any, settings: Any, ref: str) -> tuple[str, str, str, dict[str, Any]]:
    """(page, id, title, inlined API answers) for run or sweep `ref` (a run id is tried first)."""
    from .. import store
    from ..errors import NotFoundError
    from ..ui import graph, sweepviews, views

    try:
        run = store.get_run(db, ref)
    except NotFoundError:
        run = None
    if run is not None:
        data = {"run": views.run_page(db, run.id), "metrics": views.metric_series(db, run.id),
                "log": views.log_chunk(db, settings, run.id), "lineage": graph.lineage_graph(db, run=run.id, depth=2)}
        if run.kind == "search":
            data["search"] = sweepviews.search_page(db, settings.artifact_root, run.id)
        return "run", run.id, f"{run.kind} run {run.name or run.id}", data
    try:
        sweep = store.get_sweep(db, ref)
    except NotFoundError:
        raise NotFoundError(f"report {ref!r}: no run or sweep with this id or id prefix",
                            hint="bitsmith runs list (its sweep_id column names the sweeps)") from None
    return "sweep", sweep.id, f"sweep {sweep.name or sweep.id}", {"sweep": sweepviews.sweep_page(db, sweep.id)}


@click.command()
@click.argument("ref")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the HTML file to write")
@click.pass_context
def report(ctx: click.Context, ref: str, output: Path) -> None:
    """Write the views of run or sweep REF (id or id prefix) as one HTML file: styles, script, data and charts
    inline, no external reference, to open offline or share."""
    from ..errors import UsageError
    from ..ui.pages import report_html

    if output.exists() and output.is_dir():
        raise UsageError(f"--output {output}: is a directory; expected a file path")
    if not output.parent.is_dir():
        raise UsageError(f"--output {output}: folder {output.parent} does not exist; expected an existing folder")
    page, ident, title, data = collect(open_db(ctx), settings_from(ctx), ref)
    html = report_html(title, page, ident, data)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(output)
    click.echo(f"wrote {output} ({len(html.encode()) >> 10} KB, {page} {ident})", err=True)
