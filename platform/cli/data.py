"""`bitsmith data builtin|import|arithmetic`: register datasets as content-addressed artifacts."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import click

from .common import emit_json, info, json_option, open_db, settings_from, short


@click.group()
def data() -> None:
    """Datasets (text corpora and prompt/answer tasks) with train/calibration/test splits."""


def _register(ctx: click.Context, build: Callable[[Path], Path], name: str, as_json: bool) -> Any:
    from ..artifacts import temp_name
    from ..register import register_path
    from ..store.artifacts import check_artifact_name

    check_artifact_name(name, "--name")
    settings = settings_from(ctx)
    settings.home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.home, prefix=f".data-{temp_name()}-") as tmp:
        out = build(Path(tmp) / "dataset")
        rec = register_path(open_db(ctx), settings, out, kind="dataset", name=name)
    if as_json:
        emit_json(rec)
    else:
        splits = rec.metadata.get("splits", {})
        counts = ", ".join(f"{s}={v.get('records')}" for s, v in splits.items())
        info(f"registered dataset {name!r}: {counts}")
        click.echo(rec.digest)
        info(f"use it as an input: inputs.corpus={short(rec.digest)}  (or by name: {name})")
    return rec


@data.command("builtin")
@click.argument("corpus", type=click.Choice(["pydoc", "shakespeare"]))
@click.option("--name", default=None, help="artifact name (default: corpus-CORPUS)")
@json_option
@click.pass_context
def builtin(ctx: click.Context, corpus: str, name: str | None, as_json: bool) -> None:
    """A corpus that needs no download: Python's own docs (pydoc) or the shakespeare package's texts."""
    from bitsmith.workers.data import corpus as corpora

    build = corpora.build_builtin_corpus if corpus == "pydoc" else corpora.build_shakespeare_corpus
    _register(ctx, build, name or f"corpus-{corpus}", as_json)


@data.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--kind", "fmt", type=click.Choice(["text", "jsonl", "hf"]), required=True,
              help="text: .txt file/folder; jsonl: {text} or {prompt, answer} records; hf: a save_to_disk folder")
@click.option("--name", default=None, help="artifact name (default: the file or folder name)")
@json_option
@click.pass_context
def import_data(ctx: click.Context, path: Path, fmt: str, name: str | None, as_json: bool) -> None:
    """Register local text/JSONL/HF-dataset files, split by content hash into train/calibration/test."""
    from bitsmith.workers.data import importers

    fn = {"text": importers.import_text, "jsonl": importers.import_jsonl, "hf": importers.import_hf}[fmt]
    _register(ctx, lambda dest: fn(path, dest), name or path.stem, as_json)


@data.command("arithmetic")
@click.option("--n-train", default=2000, show_default=True, type=click.IntRange(1))
@click.option("--n-calibration", default=200, show_default=True, type=click.IntRange(0))
@click.option("--n-test", default=200, show_default=True, type=click.IntRange(1))
@click.option("--min-operand", default=0, show_default=True, type=int)
@click.option("--max-operand", default=99, show_default=True, type=int)
@click.option("--operations", default="+,-", show_default=True, help="comma-separated, from + - *")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--name", default="arithmetic", show_default=True)
@json_option
@click.pass_context
def arithmetic(ctx: click.Context, n_train: int, n_calibration: int, n_test: int, min_operand: int,
               max_operand: int, operations: str, seed: int, name: str, as_json: bool) -> None:
    """Generate the arithmetic reasoning task ("What is 37+45? Answer:" -> "82"), seeded, with held-out test."""
    from bitsmith.workers.data.arithmetic import generate_arithmetic

    ops = tuple(o.strip() for o in operations.split(",") if o.strip())
    _register(ctx, lambda dest: generate_arithmetic(
        dest, n_train=n_train, n_test=n_test, n_calibration=n_calibration, min_operand=min_operand,
        max_operand=max_operand, operations=ops, seed=seed), name, as_json)
