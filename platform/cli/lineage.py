"""`bitsmith lineage REF [--down] [--format tree|json|dot|mermaid] [--limit N] [--cursor C]`."""
from __future__ import annotations

import click

from .common import emit_json, info, open_db, stdout_console

SHOWN_COLLAPSED = 20  # nodes whose unlisted children are named on stderr after a tree


@click.command()
@click.argument("ref")
@click.option("--down", is_flag=True, help="descendants (what was made from REF) instead of ancestry")
@click.option("--format", "fmt", type=click.Choice(["tree", "json", "dot", "mermaid"]), default="tree",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="same as --format json")
@click.option("--limit", default=50, show_default=True, type=int,
              help="children listed per node (1 to 500); the rest are counted, not listed")
@click.option("--depth", default=50, show_default=True, type=int, help="levels to walk (1 to 1000)")
@click.option("--cursor", default=None, help="the next cursor a previous page printed: REF's next children")
@click.pass_context
def lineage(ctx: click.Context, ref: str, down: bool, fmt: str, as_json: bool, limit: int, depth: int,
            cursor: str | None) -> None:
    """Ancestry of an artifact (REF: digest prefix, name, run:ID/ROLE) or of a run (run:ID).

    One bounded page: at most --limit children per node and 500 new nodes per level; how many children a
    node has beyond those is reported (`collapsed` in JSON), and REF's next children are one --cursor away.
    """
    from .. import lineage as render
    from .. import store
    from ..store import queries

    db = open_db(ctx)
    direction = "down" if down else "up"
    if ref.startswith("run:") and "/" not in ref:
        run = store.get_run(db, ref[4:])
        page = queries.lineage_page(db, run_id=run.id, direction=direction, siblings=limit, max_depth=depth,
                                    cursor=cursor)
        root = ("run", run.id)
    else:
        art = store.resolve_artifact_ref(db, ref)
        page = queries.lineage_page(db, digest=art.digest, direction=direction, siblings=limit, max_depth=depth,
                                    cursor=cursor)
        root = ("artifact", art.digest)
    graph = page.graph
    if as_json or fmt == "json":
        emit_json({**render.to_json(graph, root, down), "collapsed": page.collapsed,
                   "next_cursor": page.next_cursor})
        return
    if fmt == "dot":
        click.echo(render.to_dot(graph))
    elif fmt == "mermaid":
        click.echo(render.to_mermaid(graph))
    else:
        stdout_console().print(render.render_tree(graph, root, down))
    for node, count in sorted(page.collapsed.items(), key=lambda kv: -kv[1])[:SHOWN_COLLAPSED]:
        kind, ident = node.split(":", 1)
        info(f"{count} more {'descendants' if down else 'ancestors'} one step from {kind} {ident[:12]} not listed")
    if len(page.collapsed) > SHOWN_COLLAPSED:
        info(f"... and at {len(page.collapsed) - SHOWN_COLLAPSED} more nodes (see --json `collapsed`)")
    if page.next_cursor:
        info(f"next_cursor: {page.next_cursor}")
