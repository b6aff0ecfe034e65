"""The `bitsmith` command: one file per noun, imported only when its command runs (fast --help)."""
from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

from ..errors import BitsmithError

# name -> (module, attribute, one-line help); commands load lazily so `bitsmith --help` stays instant.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "submit": ("submit", "submit", "Submit a job spec (YAML/JSON) with overrides; optionally wait."),
    "runs": ("runs", "runs", "List, show, follow and cancel runs; compare their metrics."),
    "artifacts": ("artifacts", "artifacts", "List, show, fetch and query content-addressed artifacts."),
    "lineage": ("lineage", "lineage", "Show what an artifact or run was made from (or what was made from it)."),
    "sweep": ("sweep", "sweep", "Run a grid / random / zip sweep of job specs and rank the children."),
    "reproduce": ("reproduce", "reproduce", "Re-run a past run from its stored spec and compare the results."),
    "export": ("export", "export", "Export a quantized model as compressed-tensors, GPTQ or GGUF (a cached job)."),
    "data": ("data", "data", "Register datasets: built-in corpora, local files, the arithmetic task."),
    "models": ("models", "models", "Register local Hugging Face model directories (or GGUF files)."),
    "db": ("db", "db", "Metadata store schema: upgrade, current revision."),
    "demo": ("demo", "demo", "Run the demo pipeline end to end on the embedded defaults."),
    "ui": ("ui", "ui", "Serve the web interface and JSON API over the store (read-only by default)."),
    "report": ("report", "report", "Write a run's or a sweep's views as one self-contained HTML file."),
    "scheduler": ("scheduler", "scheduler", "The store's dispatcher: start, stop, status (resources, runs in flight)."),
    "queue": ("scheduler", "queue_cmd", "Queued runs in dispatch order: priority, resources, what each waits for."),
    "spec-schema": ("submit", "spec_schema", "Print the JSON schema of a job kind's spec and its declared outputs."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"bitsmith.platform.cli.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][2]) for name in sorted(COMMANDS)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", "db_url", envvar="BITSMITH_DB_URL", default=None,
              help="metadata store URL (default: SQLite under $BITSMITH_HOME)")
@click.option("--artifact-root", envvar="BITSMITH_ARTIFACT_ROOT", default=None,
              help="artifact storage: a directory or fsspec URL (default: $BITSMITH_HOME/artifacts)")
@click.option("--address", envvar="BITSMITH_RAY_ADDRESS", default=None,
              help="join this Ray cluster instead of starting an embedded one")
@click.option("-v", "--verbose", is_flag=True, help="debug logging on stderr")
@click.version_option(package_name="bitsmith")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None, artifact_root: str | None, address: str | None,
        verbose: bool) -> None:
    """bitsmith: typed, tracked, reproducible jobs for model compression and post-training research."""
    from ..config import Settings

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = {"settings": Settings.from_env(db_url=db_url, artifact_root=artifact_root, ray_address=address)}


def main(argv: list[str] | None = None) -> Any:
    """Entry point: render every `BitsmithError` in one place with its exit code."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        rv = cli.main(args=argv, prog_name="bitsmith", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except BitsmithError as exc:
        from .common import printable

        click.secho(f"error: {printable(exc.message, keep_newlines=True)}", fg="red", err=True)
        if exc.hint:
            click.echo(f"hint: {printable(exc.hint, keep_newlines=True)}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        from .common import printable

        exc.message = printable(exc.message, keep_newlines=True)  # it may quote what the user typed
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
