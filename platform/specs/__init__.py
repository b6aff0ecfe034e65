"""Typed job specs: one pydantic model per job kind in a union tagged by `kind` (built from `JOB_KIND_TABLE`).

`load_spec` reads YAML/JSON plus `--set a.b=c` overrides and validates once; `canonical_json`
and `spec_hash` give the stored, fully resolved form.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError

from ..errors import SpecError
from .common import ArtifactRef, JobSpecBase, Resources, StrictModel
from .strict import StrictInputError, check_storable, loads_json, loads_yaml
from .eval import EvalSpec
from .job_kinds import JOB_KIND_TABLE
from .noop import NoopSpec
from .quantize import QuantizeSpec
from .rl import RLSpec
from .search import SearchSpec
from .train import TrainSpec

JOB_KINDS: tuple[str, ...] = tuple(JOB_KIND_TABLE)
JobSpec = Annotated[Union[tuple(entry.spec for entry in JOB_KIND_TABLE.values())],  # type: ignore[valid-type]
                    Field(discriminator="kind")]
_ADAPTER: TypeAdapter[JobSpecBase] = TypeAdapter(JobSpec)

__all__ = [
    "ArtifactRef", "EvalSpec", "JobSpec", "NoopSpec", "QuantizeSpec", "RLSpec", "SearchSpec", "TrainSpec",
    "JobSpecBase", "JOB_KIND_TABLE", "JOB_KINDS", "Resources", "StrictModel",
    "apply_overrides", "canonical_json", "check_spec_storable", "load_spec", "parse_spec", "read_spec_file",
    "semantic_json", "spec_hash",
]


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON spec file into a dict; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found; expected a YAML or JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read spec file ({exc}); expected a UTF-8 YAML or JSON file") from None
    try:
        data = loads_json(text, str(path)) if path.suffix == ".json" else loads_yaml(text, str(path))
    except StrictInputError as exc:
        raise SpecError(str(exc)) from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: top level is {type(data).__name__}; expected a mapping with a `kind` field")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `dotted.path=value` overrides (values parsed as YAML scalars) to a copy of `data`."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. method.damp_percent=0.05")
        try:
            value = loads_yaml(raw, f"--set {key}") if raw.strip() else ""
        except StrictInputError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise SpecError(f"--set {item!r}: {where} is a {type(child).__name__}; expected a mapping")
            node = child
        node[parts[-1]] = value
    return data


def _format_loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif p in JOB_KINDS and not parts:  # pydantic puts the union tag first
            continue
        elif isinstance(p, str) and p.startswith(("function-", "tagged-union")):
            continue
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(top level)"


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: `source: field.path: what; got VALUE`."""
    lines = []
    for err in exc.errors():
        loc = _format_loc(tuple(err["loc"]))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field; check the spelling against the spec reference (bitsmith spec-schema)"
        elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            ctx = err.get("ctx", {})
            tag_field = str(ctx.get("discriminator", "'kind'")).strip("'")
            expected = ctx.get("expected_tags") or ", ".join(JOB_KINDS)
            where = "" if loc == "(top level)" else loc + "."
            loc = where + tag_field
            msg = (f"unknown value {ctx.get('tag')!r}; expected one of {expected}" if err["type"] == "union_tag_invalid"
                   else f"missing; expected one of {expected}")
        got = err.get("input")
        shown = "" if err["type"].startswith(("union_tag", "missing")) or isinstance(got, dict) else f"; got {got!r}"
        lines.append(f"{source}: {loc}: {msg}{shown}")
    return "\n".join(lines)


def parse_spec(data: dict[str, Any], source: str = "spec") -> JobSpecBase:
    """Validate a dict into the spec model of its `kind`; raise `SpecError` naming each bad field."""
    try:
        spec = _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None
    check_spec_storable(spec.model_dump(), source)
    return spec


def check_spec_storable(data: dict[str, Any], source: str) -> None:
    """Refuse a validated spec holding a value the store cannot keep (NaN, Infinity, a 65-bit integer)."""
    try:
        for key, value in data.items():
            check_storable(value, key)
    except StrictInputError as exc:
        raise SpecError(f"{source}: {exc}") from None


def load_spec(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
              base: dict[str, Any] | None = None) -> JobSpecBase:
    """Load a spec from a file (or `base`) and overrides, validated once."""
    data = read_spec_file(path) if path is not None else dict(base or {})
    data = apply_overrides(data, overrides)
    return parse_spec(data, source=str(path) if path is not None else "spec")


def canonical_json(spec: JobSpecBase) -> str:
    """The fully resolved spec: defaults filled in, keys sorted, no whitespace."""
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def semantic_json(spec: JobSpecBase) -> str:
    """Canonical JSON without the fields that do not change results (name, tags, resources, ...)."""
    data = spec.model_dump(mode="json", exclude=set(spec.NON_SEMANTIC_FIELDS))
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def spec_hash(spec: JobSpecBase) -> str:
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()
