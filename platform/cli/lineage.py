"""`bitsmith lineage REF [--down] [--format tree|json|dot|mermaid]`."""
from __future__ import annotations

import click

from .common import emit_json, open_db, stdout_console


@click.command()
@click.argument("ref")
@click.option("--down", is_flag=True, help="descendants (what was made from REF) instead of ancestry")
@click.option("--format", "fmt", type=click.Choice(["tree", "json", "dot", "mermaid"]), default="tree",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="same as --format json")
@click.pass_context
def lineage(ctx: click.Context, ref: str, down: bool, fmt: str, as_json: bool) -> None:
    """Ancestry of an artifact (REF: digest prefix, name, run:ID/ROLE) or of a run (run:ID)."""
    from .. import lineage as render
    from .. import store

    db = open_db(ctx)
    if ref.startswith("run:") and "/" not in ref:
        run = store.get_run(db, ref[4:])
        graph = store.lineage(db, run_id=run.id, direction="down" if down else "up")
        root = ("run", run.id)
    else:
        art = store.resolve_artifact_ref(db, ref)
        graph = store.lineage(db, digest=art.digest, direction="down" if down else "up")
        root = ("artifact", art.digest)
    if as_json or fmt == "json":
        emit_json(render.to_json(graph, root, down))
    elif fmt == "dot":
        click.echo(render.to_dot(graph))
    elif fmt == "mermaid":
        click.echo(render.to_mermaid(graph))
    else:
        stdout_console().print(render.render_tree(graph, root, down))
