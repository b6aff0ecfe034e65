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


@db.command("check")
@click.option("--no-verify", is_flag=True, help="only check that artifact bytes exist (skip re-hashing them)")
@json_option
@click.pass_context
def check(ctx: click.Context, no_verify: bool, as_json: bool) -> None:
    """Check that the store and the artifact root agree; exits 1 when something is wrong."""
    from ..integrity import check_store
    from .common import open_db

    report = check_store(open_db(ctx), settings_from(ctx), verify_bytes=not no_verify)
    if as_json:
        emit_json({"ok": report.ok, "artifacts_checked": report.artifacts_checked,
                   "runs_checked": report.runs_checked, "problems": report.problems})
    else:
        for p in report.problems:
            click.echo(f"{p.what} {p.ref[:12]}: {p.issue}")
        click.echo(f"{report.artifacts_checked} artifacts, {report.runs_checked} runs checked: "
                   f"{'ok' if report.ok else f'{len(report.problems)} problem(s)'}")
    if not report.ok:
        ctx.exit(1)
