"""`bitsmith artifacts list|show|get|find`."""
from __future__ import annotations

from pathlib import Path

import click

from .common import (emit_json, fitted_table, fmt_bytes, fmt_time, info, json_option, literal, open_db,
                     settings_from, short, stdout_console)

META_CHARS = 40  # of the metadata summary in `artifacts list` and `find`
SHOWN_CONSUMERS = 50  # `artifacts show` lists this many consumers and counts the rest


@click.group()
def artifacts() -> None:
    """Content-addressed artifacts (REF: digest prefix, name, or run:RUN_ID/ROLE)."""


def _table(records: list) -> None:
    rows = []
    for a in records:
        meta = ", ".join(f"{k}={v}" for k, v in list(a.metadata.items())[:4]
                         if isinstance(v, (int, float, str)) and len(str(v)) < 30)
        rows.append([short(a.digest, 12), literal(a.kind), literal(a.name or ""), fmt_bytes(a.size_bytes),
                     short(a.producer_run_id, 10) or "import", fmt_time(a.created_at),
                     literal(meta if len(meta) <= META_CHARS else meta[:META_CHARS - 1] + "…")])
    # In a narrow terminal the least useful columns go first, so that names stay readable.
    stdout_console().print(fitted_table(["digest", "kind", "name", "size", "producer", "created", "meta"], rows,
                                        elastic="name", drop=("created", "meta", "producer"), shrink=("kind",)))


@artifacts.command("list")
@click.option("--kind", default=None)
@click.option("--name", default=None)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
@json_option
@click.pass_context
def list_artifacts(ctx: click.Context, kind: str | None, name: str | None, limit: int, as_json: bool) -> None:
    """Newest artifacts first."""
    from .. import store

    records = store.list_artifacts(open_db(ctx), kind=kind, name=name, limit=limit)
    if as_json:
        emit_json(records)
    else:
        _table(records)


@artifacts.command("find")
@click.option("--kind", default=None)
@click.option("--where", "where", multiple=True, metavar="EXPR",
              help="e.g. 'meta.bits<=3', 'meta.method==gptq', 'size_bytes>1000000' (repeatable, all must hold)")
@click.option("--limit", default=50, show_default=True, type=int, help="rows per page (1 to 500)")
@click.option("--cursor", default=None, help="the next cursor a previous page printed")
@json_option
@click.pass_context
def find_artifacts(ctx: click.Context, kind: str | None, where: tuple[str, ...], limit: int, cursor: str | None,
                   as_json: bool) -> None:
    """Artifacts whose kind and metadata match every --where expression (evaluated in SQL), newest first,
    one page at a time; the next page's cursor is printed on stderr (`next_cursor: ...`)."""
    from ..store import queries

    page = queries.find_artifacts(open_db(ctx), kind=kind, where=list(where), limit=limit, cursor=cursor)
    if as_json:
        emit_json(page.rows)
    else:
        _table(page.rows)
    if page.next_cursor:
        info(f"next_cursor: {page.next_cursor}")


@artifacts.command("show")
@click.argument("ref")
@click.option("--verify", is_flag=True, help="re-hash the stored bytes and check the digest")
@json_option
@click.pass_context
def show_artifact(ctx: click.Context, ref: str, verify: bool, as_json: bool) -> None:
    """One artifact: metadata, producer, consumers (and optionally a digest check)."""
    import json

    from .. import store
    from ..artifacts import verify_stored
    from ..store.artifacts import count_consumers

    db = open_db(ctx)
    a = store.resolve_artifact_ref(db, ref)
    consumers = store.artifact_consumers(db, a.digest, limit=SHOWN_CONSUMERS)
    total = count_consumers(db, a.digest) if len(consumers) == SHOWN_CONSUMERS else len(consumers)
    if verify:
        verify_stored(settings_from(ctx).artifact_root, a.digest, a.digest_version)
        info(f"verified: stored bytes hash to {a.digest[:12]}")
    if as_json:
        emit_json({"artifact": a, "consumers": consumers, "consumers_total": total})
        return
    con = stdout_console()
    con.print(f"[bold]artifact {a.digest}[/]")
    for k, v in (("kind", a.kind), ("name", a.name or "-"), ("size", fmt_bytes(a.size_bytes)),
                 ("directory", str(a.is_dir)), ("uri", a.uri), ("producer", a.producer_run_id or "import"),
                 ("created", fmt_time(a.created_at)),
                 ("consumers", ", ".join(f"{short(e.run_id, 10)}({e.role})" for e in consumers)
                  + (f" and {total - len(consumers)} more (bitsmith lineage {a.digest[:12]} --down)"
                     if total > len(consumers) else "") or "-")):
        con.print(f"  [dim]{k:>10}[/] {literal(v)}")
    meta = json.dumps(a.metadata, indent=2, sort_keys=True).replace("\n", "\n  ")
    con.print("  [dim]  metadata[/] " + literal(meta, keep_newlines=True))


@artifacts.command("get")
@click.argument("ref")
@click.argument("dest", type=click.Path(path_type=Path))
@click.pass_context
def get_artifact(ctx: click.Context, ref: str, dest: Path) -> None:
    """Copy an artifact's verified bytes to DEST (a new path)."""
    from .. import store
    from ..artifacts import copy_out, materialize

    s = settings_from(ctx)
    a = store.resolve_artifact_ref(open_db(ctx), ref)
    src = materialize(s.artifact_root, a.digest, s.home / "cache", verify=True, digest_version=a.digest_version)
    out = copy_out(src, dest)
    info(f"copied {a.kind} {a.digest[:12]} to {out}")
    click.echo(str(out))
