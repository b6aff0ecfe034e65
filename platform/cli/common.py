"""Shared CLI plumbing: settings on the click context, `--json` output, rendering of records."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import unicodedata
from datetime import datetime
from typing import Any, Callable

import click

from ..config import Settings

STATUS_STYLE = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "magenta"}


def settings_from(ctx: click.Context) -> Settings:
    return ctx.find_root().obj["settings"]


def open_db(ctx: click.Context) -> Any:
    from .. import store

    return store.open_database(settings_from(ctx).db_url)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="machine-readable JSON on stdout")(fn)


EXECUTOR_CHOICE = click.Choice(["ray", "local"])
EXECUTOR_HELP = "ray: a Ray task (embedded cluster unless --address); local: in-process, for debugging"


def executor_option(help: str = EXECUTOR_HELP) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--executor ray|local` (default ray), declared once for every command that runs jobs."""
    return click.option("--executor", type=EXECUTOR_CHOICE, default="ray", show_default=True, help=help)


def no_cache_option(help: str = "run even if an identical run already succeeded (no cache hits, no joining)"
                    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--no-cache`, declared once for every command that submits jobs."""
    return click.option("--no-cache", is_flag=True, help=help)


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(to_jsonable(obj), indent=2, sort_keys=True))


def stdout_console() -> Any:
    """Rich output at the terminal's width (or $COLUMNS); 120 columns when piped without $COLUMNS."""
    from rich.console import Console

    known = sys.stdout.isatty() or "COLUMNS" in os.environ
    return Console(soft_wrap=False, width=Console().width if known else 120)


# The main column of a fitted table (a name) keeps this many characters a line before columns are dropped,
# and this many before the others are cut.
ELASTIC_WIDTH, MIN_ELASTIC_WIDTH = 24, 16


def fitted_table(headers: list[str], rows: list[list[str]], *, elastic: str, drop: tuple[str, ...] = (),
                 shrink: tuple[str, ...] = (), width: int | None = None) -> Any:
    """A rich table (cells are markup) that fits `width` (default: stdout's) with `elastic` kept readable.

    While `elastic` would get fewer than ELASTIC_WIDTH characters, the columns in `drop` are left out in
    that order; while it would get fewer than MIN_ELASTIC_WIDTH, those in `shrink` are cut (with an
    ellipsis) down to 10 characters. `elastic` gets the width left and folds longer values onto more lines.
    """
    from rich.table import Table
    from rich.text import Text

    width = width or stdout_console().width
    widths = {h: max([len(h)] + [Text.from_markup(row[i]).cell_len for row in rows]) for i, h in enumerate(headers)}
    shown = list(headers)

    def fixed() -> int:  # what every column but `elastic` takes, borders and padding included
        return sum(widths[c] for c in shown if c != elastic) + 3 * len(shown) + 1

    for col in drop:
        if fixed() + min(widths[elastic], ELASTIC_WIDTH) <= width:
            break
        shown.remove(col)
    for col in shrink:
        excess = fixed() + min(widths[elastic], MIN_ELASTIC_WIDTH) - width
        if excess > 0 and col in shown:
            widths[col] = max(widths[col] - excess, 10, len(col))
    widths[elastic] = max(min(widths[elastic], width - fixed()), min(widths[elastic], MIN_ELASTIC_WIDTH))
    table = Table()
    for col in shown:
        table.add_column(col, width=widths[col], no_wrap=col != elastic,
                         overflow="fold" if col == elastic else "ellipsis")
    for row in rows:
        table.add_row(*[row[headers.index(col)] for col in shown])
    return table


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """`text` with control and format characters (ESC, BEL, bidi overrides, ...) written as visible escapes."""
    def visible(ch: str) -> str:
        if (keep_newlines and ch == "\n") or unicodedata.category(ch) not in ("Cc", "Cf"):
            return ch
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"

    return "".join(visible(ch) for ch in str(text))


def literal(text: object, *, keep_newlines: bool = False) -> str:
    """A user string (name, tag, metadata, error text) for rich output: printed as is, never as markup."""
    from rich.markup import escape

    return escape(printable(text, keep_newlines=keep_newlines))


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def status_text(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def short(s: str | None, n: int = 12) -> str:
    return (s or "")[:n]


def fmt_time(t: datetime | None) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def fmt_duration(run: Any) -> str:
    if not run.started_at:
        return "-"
    end = run.finished_at or datetime.now(run.started_at.tzinfo)
    s = (end - run.started_at).total_seconds()
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}m"


def fmt_value(v: float) -> str:
    if v != v:  # NaN
        return "nan"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.4e}"


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def info(msg: str) -> None:
    """Logs and hints go to stderr (control characters made visible); data goes to stdout."""
    click.echo(printable(msg, keep_newlines=True), err=True)

