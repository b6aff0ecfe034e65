"""The store's SQLAlchemy 2 ORM schema (portable across SQLite and PostgreSQL).

Times are stored in UTC (`UTCDateTime` hands back aware datetimes on both databases). JSON columns
use the generic `JSON` type so the JSON path accessors work the same on both. The Alembic migrations
in `bitsmith.migrations` create exactly this schema (a test compares them).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, MetaData,
                        String, Text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID = String(32)        # records.new_id(): 26 hex digits
DIGEST = String(64)    # sha256 hex


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """`DateTime(timezone=True)` that always stores UTC and always returns aware UTC datetimes.

    SQLite keeps no zone, so values are stored as naive UTC there and the zone is re-attached on read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}; expected a timezone-aware (UTC) datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict] = mapped_column(JSON, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # Input ref -> artifact digest for every ref the sweep's children use, resolved once at creation:
    # a resume runs on these digests, never on what a name means later (NULL: a sweep from before 0005).
    resolved_inputs: Mapped[dict | None] = mapped_column(JSON)


class Run(Base):
    __tablename__ = "runs"
    # Listings filtered by kind or status, newest first, walk these in order (store.queries).
    __table_args__ = (Index("ix_runs_kind_created_at", "kind", "created_at", "id"),
                      Index("ix_runs_status_created_at", "status", "created_at", "id"))

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False, index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    spec: Mapped[dict] = mapped_column(JSON, nullable=False)
    spec_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    cache_key: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    code_version: Mapped[dict] = mapped_column(JSON, nullable=False)
    environment: Mapped[dict] = mapped_column(JSON, nullable=False)
    tags: Mapped[list] = mapped_column(JSON, nullable=False)
    executor: Mapped[str | None] = mapped_column(String(32))
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    max_retries: Mapped[int] = mapped_column(Integer, nullable=False)
    cache_hit_of: Mapped[str | None] = mapped_column(ID, ForeignKey("runs.id", ondelete="SET NULL"))
    sweep_id: Mapped[str | None] = mapped_column(ID, ForeignKey("sweeps.id", ondelete="SET NULL"), index=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    log_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The lease of the attempt that runs the job (store.leases): renewed by its heartbeat; once it has
    # run out, the job's worker or node is taken for dead and the run is retried or failed.
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # An in-flight run with the same cache key that this queued run waits for, to become its cache hit.
    joins: Mapped[str | None] = mapped_column(ID, ForeignKey("runs.id", ondelete="SET NULL"))
    # Queue order: higher priority first, then oldest first (`bitsmith submit --priority`).
    priority: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class Artifact(Base):
    __tablename__ = "artifacts"
    # `artifacts find --kind K`, newest first, walks this in order (store.queries).
    __table_args__ = (Index("ix_artifacts_kind_created_at", "kind", "created_at", "digest"),)

    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    name: Mapped[str | None] = mapped_column(String(255), index=True)
    uri: Mapped[str] = mapped_column(Text, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    is_dir: Mapped[bool] = mapped_column(Boolean, nullable=False)
    # `metadata` is reserved on declarative classes: the attribute is `meta`, the column `metadata`.
    meta: Mapped[dict] = mapped_column("metadata", JSON, nullable=False)
    producer_run_id: Mapped[str | None] = mapped_column(ID, ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    # The digest encoding the object is verified with (bitsmith.platform.digests): 1 for rows from before 0003.
    digest_version: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")


class ArtifactName(Base):
    """One registration of an artifact under a plain name (no `/`): a name means its newest registration."""

    __tablename__ = "artifact_names"
    __table_args__ = (Index("ix_artifact_names_name_id", "name", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    digest: Mapped[str] = mapped_column(DIGEST, ForeignKey("artifacts.digest", ondelete="CASCADE"), nullable=False,
                                        index=True)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class RunInput(Base):
    """Lineage edge: run `run_id` consumed artifact `digest` under `role`.

    Indexed both ways: by run (the primary key: what a run consumed) and by digest, covering the run and
    role (what consumed an artifact), so each step of a lineage walk is an index lookup.
    """

    __tablename__ = "run_inputs"
    __table_args__ = (Index("ix_run_inputs_digest_run_id", "digest", "run_id", "role"),)

    run_id: Mapped[str] = mapped_column(ID, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(128), primary_key=True)
    digest: Mapped[str] = mapped_column(DIGEST, ForeignKey("artifacts.digest"), nullable=False)


class RunOutput(Base):
    """Lineage edge: run `run_id` produced artifact `digest` under `role` (indexed both ways, like inputs)."""

    __tablename__ = "run_outputs"
    __table_args__ = (Index("ix_run_outputs_digest_run_id", "digest", "run_id", "role"),)

    run_id: Mapped[str] = mapped_column(ID, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(128), primary_key=True)
    digest: Mapped[str] = mapped_column(DIGEST, ForeignKey("artifacts.digest"), nullable=False)


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_run_id_key", "run_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ID, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False)
    # The attempt that logged the row (0: a cache hit's copy of its original's finals); reads use the latest.
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    key: Mapped[str] = mapped_column(String(255), nullable=False)
    step: Mapped[int | None] = mapped_column(BigInteger)
    # Nullable because SQLite stores NaN as NULL; the store reads NULL back as NaN.
    value: Mapped[float | None] = mapped_column(Float)
    logged_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class RunMetricFinal(Base):
    """A run's final value of one metric key, as `store.final_metrics` defines it (the value at the largest step
    of the run's latest attempt that logged any), written in the same transaction as the metric rows.

    The (key, value, run_id) index makes sorting and filtering runs by a final metric an index scan.
    """

    __tablename__ = "run_metric_finals"
    __table_args__ = (Index("ix_run_metric_finals_key_value", "key", "value", "run_id"),)

    run_id: Mapped[str] = mapped_column(ID, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    step: Mapped[int | None] = mapped_column(BigInteger)
    # NULL for NaN on both databases (NaN neither sorts nor compares).
    value: Mapped[float | None] = mapped_column(Float)


class RunEvent(Base):
    """One status change of a run (the run's history)."""

    __tablename__ = "run_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ID, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    message: Mapped[str | None] = mapped_column(Text)


class Dispatcher(Base):
    """The one dispatcher of the store's queue: its lease (renewed by its heartbeat) and its last snapshot."""

    __tablename__ = "dispatchers"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)       # one row: "default"
    owner: Mapped[str] = mapped_column(String(255), nullable=False)       # host:pid of the dispatcher process
    ray_address: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    lease_expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # Resources total/used/free, runs in flight, as of its last heartbeat (what `scheduler status` shows).
    state: Mapped[dict] = mapped_column(JSON, nullable=False)


runs_t = Run.__table__
artifacts_t = Artifact.__table__
run_inputs_t = RunInput.__table__
run_outputs_t = RunOutput.__table__
metrics_t = Metric.__table__
metric_finals_t = RunMetricFinal.__table__
run_events_t = RunEvent.__table__
sweeps_t = Sweep.__table__
artifact_names_t = ArtifactName.__table__
dispatchers_t = Dispatcher.__table__
