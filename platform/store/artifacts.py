"""Artifact rows (metadata only; bytes live under the artifact root): register, resolve refs, query.

Names: a plain name (no `/`) means the artifact of its newest registration (`artifact_names`; registering
the same bytes again under a name makes them its newest). `RUN_NAME/ROLE` means output ROLE of the newest
succeeded run named RUN_NAME (cache hits included), read from runs + run_outputs, never from artifact names;
so names with `/` are reserved for run outputs and refused for anything a user registers.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, ColumnElement, Row, and_, case, func, insert, or_, select

from ..errors import NotFoundError, UsageError
from .engine import Database, dialect_insert, read, write
from .records import ArtifactRecord, RunArtifactEdge, RunRecord
from .records import SUCCEEDED
from .runs import resolve_run_id, run_from_row
from .schema import artifact_names_t, artifacts_t, run_inputs_t, run_outputs_t, runs_t, utcnow

_HEX = re.compile(r"^[0-9a-f]+$")
MIN_PREFIX = 6
REF_FORMS = ("sha256:HEX, a digest prefix (at least 6 hex digits), an artifact name, RUN_NAME/ROLE "
             "or run:RUN_ID/ROLE")
_WHERE = re.compile(r"^\s*(meta(?:\.[A-Za-z0-9_\-]+)+|size_bytes|kind|name)\s*(<=|>=|==|!=|<|>)\s*(.*?)\s*$")
WHERE_FORM = "FIELD OP VALUE with FIELD meta.KEY[.SUBKEY], size_bytes, kind or name and OP one of <= >= < > == !="


def artifact_from_row(row: Row) -> ArtifactRecord:
    m = row._mapping
    return ArtifactRecord(digest=m["digest"], kind=m["kind"], name=m["name"], uri=m["uri"],
                          size_bytes=m["size_bytes"], is_dir=bool(m["is_dir"]), metadata=m["metadata"] or {},
                          producer_run_id=m["producer_run_id"], created_at=m["created_at"],
                          digest_version=m["digest_version"])


def check_artifact_name(name: str | None, field: str = "name") -> str | None:
    """`name` unless it contains `/` (reserved for RUN_NAME/ROLE) or is empty; the error names `field`."""
    if name is not None and ("/" in name or not name.strip()):
        raise UsageError(f"{field} {name!r}: artifact names may not be empty or contain '/' (RUN_NAME/ROLE names a "
                         "run's output); expected a plain name such as 'corpus-v2'")
    return name


def register_artifact(db: Database, *, digest: str, kind: str, name: str | None, uri: str, size_bytes: int,
                      is_dir: bool = False, metadata: dict[str, Any] | None = None,
                      producer_run_id: str | None = None, digest_version: int = 2) -> ArtifactRecord:
    """Insert the artifact row for `digest`, or return the existing one (idempotent, race-free).

    A plain `name` is also recorded as the name's newest registration, even when the bytes were already
    registered. A name with `/` is refused unless a run produced the artifact (it stays display-only then).
    """
    digest = digest.removeprefix("sha256:").lower()
    if len(digest) != 64 or not _HEX.match(digest):
        raise UsageError(f"register_artifact: digest {digest!r}; expected 64 lowercase hex digits (sha256)")
    if producer_run_id is None:
        check_artifact_name(name)
    values = {"digest": digest, "kind": kind, "name": name, "uri": uri, "size_bytes": int(size_bytes),
              "is_dir": bool(is_dir), "metadata": metadata or {}, "producer_run_id": producer_run_id,
              "created_at": utcnow(), "digest_version": digest_version}
    statement = dialect_insert(db.dialect)(artifacts_t).on_conflict_do_nothing(index_elements=["digest"])

    def body(conn: Connection) -> ArtifactRecord:
        inserted = conn.execute(statement, values).rowcount == 1
        if name is not None and "/" not in name:
            conn.execute(insert(artifact_names_t),
                         {"name": name, "digest": digest, "registered_at": values["created_at"]})
        if inserted:  # the row is what we wrote
            return ArtifactRecord(**values)
        return artifact_from_row(conn.execute(select(artifacts_t).where(artifacts_t.c.digest == digest)).one())

    return write(db, body)


def _not_found(ref: str, why: str = "no artifact with that digest prefix or name") -> NotFoundError:
    return NotFoundError(f"artifact ref {ref!r}: {why}; expected {REF_FORMS}", hint="bitsmith artifacts list")


def _by_prefix(conn: Connection, ref: str, prefix: str) -> ArtifactRecord | None:
    rows = conn.execute(select(artifacts_t).where(artifacts_t.c.digest.startswith(prefix))
                        .order_by(artifacts_t.c.digest).limit(11)).all()
    if len(rows) > 1:
        shown = ", ".join(r.digest[:16] for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
        count = len(rows) if len(rows) <= 10 else "more than 10"
        raise UsageError(f"artifact ref {ref!r}: digest prefix matches {count} artifacts ({shown}); "
                         "expected a longer prefix", hint="bitsmith artifacts list")
    return artifact_from_row(rows[0]) if rows else None


def _by_name(conn: Connection, name: str) -> ArtifactRecord | None:
    """The artifact of the newest registration of plain name `name`."""
    row = conn.execute(select(artifacts_t).join(artifact_names_t, artifact_names_t.c.digest == artifacts_t.c.digest)
                       .where(artifact_names_t.c.name == name).order_by(artifact_names_t.c.id.desc()).limit(1)).first()
    return artifact_from_row(row) if row is not None else None


def _by_run_name(conn: Connection, ref: str, run_name: str, role: str) -> ArtifactRecord:
    """Output `role` of the newest succeeded run named `run_name` (a cache hit has its own outputs)."""
    run = conn.execute(select(runs_t.c.id).where(runs_t.c.name == run_name, runs_t.c.status == SUCCEEDED)
                       .order_by(runs_t.c.created_at.desc(), runs_t.c.id.desc()).limit(1)).first()
    if run is None:
        raise NotFoundError(f"artifact ref {ref!r}: no succeeded run named {run_name!r}; expected RUN_NAME/ROLE "
                            "with the name of a succeeded run", hint="bitsmith runs list --status succeeded")
    return _run_output(conn, ref, run.id, role, f"run {run.id} (the newest succeeded run named {run_name!r})", "none")


def newest_run_named(db: Database, run_name: str) -> RunRecord | None:
    """The run `RUN_NAME/ROLE` names: the newest succeeded run named `run_name`, else the newest of any status
    (so its job kind is known before it succeeded), None when no run has that name."""
    def body(conn: Connection) -> RunRecord | None:
        row = conn.execute(select(runs_t).where(runs_t.c.name == run_name)
                           .order_by((runs_t.c.status == SUCCEEDED).desc(), runs_t.c.created_at.desc(),
                                     runs_t.c.id.desc()).limit(1)).first()
        return run_from_row(row) if row is not None else None
    return read(db, body)


def _run_output(conn: Connection, ref: str, run_id: str, role: str, which: str, no_roles: str) -> ArtifactRecord:
    """Output `role` of run `run_id`; a NotFoundError listing its outputs (`which` names the run) otherwise."""
    rows = conn.execute(select(run_outputs_t.c.role, artifacts_t)
                        .join(artifacts_t, artifacts_t.c.digest == run_outputs_t.c.digest)
                        .where(run_outputs_t.c.run_id == run_id)).all()
    for row in rows:
        if row.role == role:
            return artifact_from_row(row)
    roles = ", ".join(sorted(r.role for r in rows)) or no_roles
    raise NotFoundError(f"artifact ref {ref!r}: {which} has no output {role!r}; expected one of its outputs ({roles})",
                        hint=f"bitsmith runs show {run_id}")


def get_artifact(db: Database, digest_or_prefix: str) -> ArtifactRecord:
    """The artifact with this digest (or unique digest prefix of at least 6 hex digits)."""
    ref = digest_or_prefix
    prefix = ref.strip().lower().removeprefix("sha256:")
    if len(prefix) < MIN_PREFIX or not _HEX.match(prefix):
        raise _not_found(ref, "not a digest or digest prefix")
    with db.transaction() as conn:
        found = _by_prefix(conn, ref, prefix)
    if found is None:
        raise _not_found(ref, "no artifact with that digest prefix")
    return found


def resolve_artifact_ref(db: Database, ref: str) -> ArtifactRecord:
    """Resolve `sha256:HEX`, a digest prefix (>= 6 hex digits), a plain name (its newest registration),
    `RUN_NAME/ROLE` (the newest succeeded run's output) or `run:RUN_ID/ROLE`."""
    text = ref.strip()
    with db.transaction() as conn:
        if text.startswith("run:"):
            run_ref, sep, role = text[4:].partition("/")
            if not sep or not run_ref or not role:
                raise UsageError(f"artifact ref {ref!r}: malformed run reference; expected run:RUN_ID/ROLE, "
                                 "e.g. run:01a2b3/model", hint="bitsmith runs show RUN_ID")
            run_id = resolve_run_id(conn, run_ref)
            return _run_output(conn, ref, run_id, role, f"run {run_id}", "none yet")
        if text.startswith("sha256:"):
            prefix = text[7:].lower()
            if len(prefix) < MIN_PREFIX or not _HEX.match(prefix):
                raise _not_found(ref, "not a sha256 digest")
            found = _by_prefix(conn, ref, prefix)
            if found is None:
                raise _not_found(ref, "no artifact with that digest")
            return found
        if len(text) >= MIN_PREFIX and _HEX.match(text.lower()):
            found = _by_prefix(conn, ref, text.lower())
            if found is not None:
                return found
        run_name, sep, role = text.rpartition("/")
        if sep:
            if not run_name or not role:
                raise UsageError(f"artifact ref {ref!r}: malformed run output reference; expected RUN_NAME/ROLE, "
                                 "e.g. base-model/model", hint="bitsmith runs list")
            return _by_run_name(conn, ref, run_name, role)
        found = _by_name(conn, text)
        if found is None:
            raise _not_found(ref)
        return found


def list_artifacts(db: Database, *, kind: str | None = None, name: str | None = None,
                   limit: int | None = 100) -> list[ArtifactRecord]:
    """Artifacts, newest first."""
    query = select(artifacts_t).order_by(artifacts_t.c.created_at.desc(), artifacts_t.c.digest)
    if kind is not None:
        query = query.where(artifacts_t.c.kind == kind)
    if name is not None:
        named = select(artifact_names_t.c.digest).where(artifact_names_t.c.name == name)
        query = query.where(or_(artifacts_t.c.name == name, artifacts_t.c.digest.in_(named)))
    if limit is not None:
        query = query.limit(limit)
    with db.transaction() as conn:
        return [artifact_from_row(r) for r in conn.execute(query)]


def _parse_value(raw: str) -> tuple[str, Any]:
    """("number", float) | ("bool", bool) | ("string", str)."""
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return "string", raw[1:-1]
    try:
        number = float(raw)
    except ValueError:
        pass
    else:
        if number == number:  # not NaN
            return "number", number
    if raw.lower() in ("true", "false"):
        return "bool", raw.lower() == "true"
    return "string", raw


def _typed_json(db: Database, path: tuple[str, ...], value_type: str) -> ColumnElement:
    """meta at `path` as a SQL value of `value_type`, NULL where the stored JSON value has another type.

    The guard matters: SQLite orders any text above any number, and PostgreSQL fails a cast of a
    non-numeric string; both would make `meta.bits < 4` wrong or fatal on mixed metadata.
    """
    element = artifacts_t.c["metadata"][path]  # JSON path accessor (json_extract / #>)
    typed = {"number": element.as_float(), "bool": element.as_boolean(), "string": element.as_string()}[value_type]
    if db.is_sqlite:
        json_path = "$" + "".join("." + json.dumps(key) for key in path)
        kind = func.json_type(artifacts_t.c["metadata"], json_path)
        wanted = {"number": ("integer", "real"), "bool": ("true", "false"), "string": ("text",)}[value_type]
    else:
        kind = func.json_typeof(element)
        wanted = {"number": ("number",), "bool": ("boolean",), "string": ("string",)}[value_type]
    return case((kind.in_(wanted), typed), else_=None)


_OPS = {"<=": "__le__", ">=": "__ge__", "<": "__lt__", ">": "__gt__", "==": "__eq__", "!=": "__ne__"}


def where_clause(db: Database, expression: str) -> ColumnElement[bool]:
    """SQL for one `FIELD OP VALUE` filter (see WHERE_FORM)."""
    match = _WHERE.match(expression)
    if match is None or not match.group(3):
        raise UsageError(f"--where {expression!r}: malformed filter; expected {WHERE_FORM}, e.g. 'meta.bits<=4'")
    field, op, raw = match.groups()
    value_type, value = _parse_value(raw)
    if field.startswith("meta."):
        column = _typed_json(db, tuple(field.split(".")[1:]), value_type)
    elif field == "size_bytes":
        if value_type != "number":
            raise UsageError(f"--where {expression!r}: size_bytes compares with a number; got {raw!r}")
        column = artifacts_t.c.size_bytes
    else:
        column, value = artifacts_t.c[field], raw if value_type != "string" else value
    if value_type == "bool" and op not in ("==", "!="):
        raise UsageError(f"--where {expression!r}: a boolean compares only with == or !=; expected {WHERE_FORM}")
    return getattr(column, _OPS[op])(value)


def find_artifacts(db: Database, *, kind: str | None = None, where: Iterable[str] = (),
                   limit: int | None = None) -> list[ArtifactRecord]:
    """Artifacts matching every `FIELD OP VALUE` filter (evaluated in SQL), newest first."""
    conditions = [where_clause(db, expression) for expression in where]
    if kind is not None:
        conditions.append(artifacts_t.c.kind == kind)
    query = select(artifacts_t).order_by(artifacts_t.c.created_at.desc(), artifacts_t.c.digest)
    if conditions:
        query = query.where(and_(*conditions))
    if limit is not None:
        query = query.limit(limit)
    with db.transaction() as conn:
        return [artifact_from_row(r) for r in conn.execute(query)]


def artifact_consumers(db: Database, digest: str, limit: int | None = None) -> list[RunArtifactEdge]:
    """The runs that took artifact `digest` as an input (the first `limit` by run id, if given)."""
    t = run_inputs_t
    query = select(t.c.run_id, t.c.digest, t.c.role).where(t.c.digest == digest).order_by(t.c.run_id, t.c.role)
    if limit is not None:
        query = query.limit(limit)
    with db.transaction() as conn:
        return [RunArtifactEdge(run_id=r, digest=d, role=role, direction="input") for r, d, role in conn.execute(query)]


def count_consumers(db: Database, digest: str) -> int:
    """How many input edges name artifact `digest` (an index-only count)."""
    with db.transaction() as conn:
        return conn.execute(select(func.count()).select_from(run_inputs_t).where(run_inputs_t.c.digest == digest)
                            ).scalar_one()
