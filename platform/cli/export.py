"""`bitsmith export RUN_OR_ARTIFACT --format F -o PATH`: run an `export` job (cached, recorded, in lineage) and
copy its output to PATH."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .common import emit_json, executor_option, info, json_option, no_cache_option, open_db, settings_from

FORMATS = ("compressed-tensors", "gptq", "gguf")


def resolve_model(db: Any, ref: str) -> Any:
    """The quantized model `ref` names: an artifact ref, or a run (id prefix or name) whose `model` output it is."""
    from .. import store
    from ..errors import UsageError

    try:
        return store.resolve_artifact_ref(db, ref)
    except UsageError as first:
        for candidate in (f"run:{ref}/model", f"{ref}/model"):
            try:
                return store.resolve_artifact_ref(db, candidate)
            except UsageError:
                continue
        raise UsageError(f"export {ref!r}: no artifact, run id or run name matches ({first.message}); expected a "
                         "quantized-model artifact or a quantize/search run", hint="bitsmith runs list --kind quantize")


@click.command()
@click.argument("ref", metavar="RUN_OR_ARTIFACT")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="the format written")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), required=True,
              help="new file (gguf) or folder (compressed-tensors, gptq) to copy the export to")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="export spec field, e.g. --set target.float_type=f16, --set target.quantized_weights=dequantized "
                   "(GGUF) or --set target.checkpoint_format=gptq_v2")
@executor_option()
@no_cache_option()
@json_option
@click.pass_context
def export(ctx: click.Context, ref: str, fmt: str, output: Path, overrides: tuple[str, ...], executor: str,
           no_cache: bool, as_json: bool) -> None:
    """Export a quantized model (a quantize or search run, or its `model` artifact) as FORMAT to -o PATH.

    The export is a job like any other: cached (a second identical export reuses the first), recorded, and
    in lineage below the quantized model as an `export` artifact (`artifacts find --kind export`).
    """
    from .. import store
    from ..artifacts import copy_out, materialize
    from ..errors import JobError, UsageError
    from ..provenance import code_version
    from ..scheduler.submit import record_submission
    from ..specs import load_spec
    from .submit import execute_and_wait, run_summary

    if output.exists() or output.is_symlink():
        raise UsageError(f"-o {output}: already exists; expected a new path for the export")
    if not output.parent.is_dir():
        raise UsageError(f"-o {output}: folder {output.parent} does not exist; expected a new path in an existing "
                         "folder")
    settings = settings_from(ctx)
    db = open_db(ctx)
    model = resolve_model(db, ref)
    base = {"kind": "export", "inputs": {"model": f"sha256:{model.digest}"}, "target": {"format": fmt}}
    spec = load_spec(None, overrides, base=base)
    sub = record_submission(db, spec, code=code_version(), executor=executor, no_cache=no_cache)
    run = sub.run
    if sub.cache_hit:
        info(f"cache hit: run {run.id} reuses the export of run {run.cache_hit_of}")
    else:
        execute_and_wait([run.id], settings, executor)
    result = run_summary(db, run.id)
    if result["status"] != "succeeded":
        raise JobError(f"export run {run.id} {result['status']}: {result.get('error') or 'no error recorded'}",
                       hint=f"bitsmith runs show {run.id[:10]}")
    artifact = store.get_artifact(db, result["outputs"]["export"])
    src = materialize(settings.artifact_root, artifact.digest, settings.home / "cache", verify=True,
                      digest_version=artifact.digest_version)
    dest = copy_out(src, output)
    meta = artifact.metadata
    if as_json:
        emit_json({**result, "path": str(dest), "artifact": artifact})
    else:
        click.echo(str(dest))
        info(f"{fmt}: {meta.get('bits_per_weight', float('nan')):.3f} bits per weight (all tensors), "
             f"{meta.get('quantized_bits_per_weight', float('nan')):.3f} over the quantized layers")
        if meta.get("note"):
            info(f"note: {meta['note']}")
        info(f"next: bitsmith artifacts show {artifact.digest[:12]}   bitsmith lineage {artifact.digest[:12]}")
