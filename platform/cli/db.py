"""`bitsmith db upgrade|current`."""
from __future__ import annotations

import click

from .common import emit_json, info, json_option, settings_from


@click.group()
def db() -> None:
    """Metadata store schema (server databases are never migrated silently)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_context
def upgrade(ctx: click.Context, revision: str) -> None:
    """Migrate the store's schema (to head by default)."""
    from ..store.engine import current_revision, upgrade_database

    url = settings_from(ctx).db_url
    before = current_revision(url)
    upgrade_database(url, revision) if revision != "head" else upgrade_database(url)
    info(f"schema: {before or 'empty'} -> {current_revision(url)}")


@db.command("current")
@json_option
@click.pass_context
def current(ctx: click.Context, as_json: bool) -> None:
    """Print the store's schema revision and the one this bitsmith expects."""
    from ..store.engine import current_revision, head_revision

    url = settings_from(ctx).db_url
    cur, head = current_revision(url), head_revision()
    if as_json:
        emit_json({"current": cur, "head": head, "up_to_date": cur == head})
    else:
        click.echo(f"{cur or 'empty'} (head: {head}){'' if cur == head else '  -> run: bitsmith db upgrade'}")
