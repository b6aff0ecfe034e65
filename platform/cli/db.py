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
    check_upgrade_target(revision, before)
    upgrade_database(url, revision) if revision != "head" else upgrade_database(url)
    info(f"schema: {before or 'empty'} -> {current_revision(url)}")


def check_upgrade_target(revision: str, current: str | None) -> None:
    """Refuse an unknown revision, or one older than `current` (upgrade never goes back)."""
    from ..errors import UsageError
    from ..store.engine import known_revisions

    known = known_revisions()
    if revision != "head" and revision not in known:
        raise UsageError(f"db upgrade --revision {revision!r}: unknown revision; expected head or one of "
                         f"{', '.join(known)}")
    target = known[-1] if revision == "head" else revision
    if current in known and known.index(target) < known.index(current):
        raise UsageError(f"db upgrade --revision {revision!r}: older than the store's revision {current}; "
                         "expected a later revision (upgrade never goes back)")


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
@click.option("--repair", is_flag=True,
              help="drop bad stored copies (the next writer of the same bytes stores them afresh) and remove "
                   "stale temp leftovers of interrupted writes")
@click.option("--grace-s", default=3600.0, show_default=True, type=click.FloatRange(0),
              help="a temp leftover counts as stale once untouched this long (and its writer is gone)")
@json_option
@click.pass_context
def check(ctx: click.Context, no_verify: bool, repair: bool, grace_s: float, as_json: bool) -> None:
    """Check that the store and the artifact root agree; exits 1 when something is wrong (and not repaired)."""
    from ..integrity import check_store
    from .common import open_db

    report = check_store(open_db(ctx), settings_from(ctx), verify_bytes=not no_verify, repair=repair,
                         grace_s=grace_s)
    left = [p for p in report.problems if not p.repaired]
    if as_json:
        emit_json({"ok": report.ok, "artifacts_checked": report.artifacts_checked,
                   "runs_checked": report.runs_checked, "problems": report.problems,
                   "unrepaired": len(left)})
    else:
        for p in report.problems:
            click.echo(f"{p.what} {p.ref if p.what == 'leftover' else p.ref[:12]}: {p.issue}")
        repaired = len(report.problems) - len(left)
        click.echo(f"{report.artifacts_checked} artifacts, {report.runs_checked} runs checked: "
                   f"{'ok' if report.ok else f'{len(report.problems)} problem(s)'}"
                   f"{f', {repaired} repaired' if repaired else ''}")
    if left:
        ctx.exit(1)
