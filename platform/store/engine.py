"""Open the metadata database: engines, sessions, write retries, and Alembic run from code.

An embedded SQLite database is created and upgraded to head on first use, under a file lock next to
it (many processes may open it at once). A server database (PostgreSQL) is never migrated silently:
if it is not at head, `open_database` refuses it and names `bitsmith db upgrade`.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import random
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from ..config import default_db_url
from ..errors import StoreError

log = logging.getLogger(__name__)

VERSION_TABLE = "bitsmith_alembic_version"
# The revision this bitsmith's migrations end at. Opening a database already at it reads one row with plain
# SQL and never imports Alembic (the migration check used to cost ~0.9 s a command). A test keeps it equal to
# Alembic's own head, so a new migration must update it.
SCHEMA_HEAD = "0007"
SQLITE_BUSY_TIMEOUT_S = 60
UPGRADE_HINT = "run `bitsmith db upgrade` (back up the database first)"
T = TypeVar("T")


@dataclass(frozen=True)
class Database:
    """One database: its URL, engine and session factory. Obtain it from `open_database`."""

    url: str
    engine: Engine
    sessionmaker: sessionmaker

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """An ORM session: commit on success, rollback on error."""
        with self.sessionmaker.begin() as session:
            yield session

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Connection]:
        """A Core connection inside one transaction (on SQLite, `write` takes the write lock up front)."""
        with self.engine.connect() as conn:
            if write:
                conn = conn.execution_options(bitsmith_write=True)
            with conn.begin():
                yield conn


def mask_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _is_retryable(exc: DBAPIError) -> bool:
    text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
    if "database is locked" in text or "database is busy" in text or "database table is locked" in text:
        return True
    return getattr(exc.orig, "sqlstate", None) in ("40001", "40P01")  # serialization failure, deadlock


def write(db: Database, fn: Callable[[Connection], T], *, attempts: int = 12) -> T:
    """Run `fn(conn)` in one write transaction; retry from scratch if the database is locked or busy.

    `fn` must be safe to re-run (it only touches the database through `conn`).
    """
    delay = 0.02
    for attempt in range(attempts):
        try:
            with db.transaction(write=True) as conn:
                return fn(conn)
        except (OperationalError, DBAPIError) as exc:
            if not _is_retryable(exc) or attempt == attempts - 1:
                raise
            log.debug("%s: %s; retrying in %.2fs", mask_url(db.url), exc.orig, delay)
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")


def dialect_insert(dialect: str) -> Callable[[Any], Any]:
    """The `insert` with ON CONFLICT of `dialect` ("sqlite" or "postgresql"), imported on first use: the
    PostgreSQL dialect package pulls in its async drivers (~40 ms), which a SQLite command never needs."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert


def read(db: Database, fn: Callable[[Connection], T]) -> T:
    """Run `fn(conn)` in one read transaction."""
    with db.transaction() as conn:
        return fn(conn)


# ---------------------------------------------------------------------------------------- engines

_ENGINES: dict[str, Engine] = {}
_DATABASES: dict[str, Database] = {}
_LOCK = threading.Lock()


def _sqlite_path(url: str) -> Path | None:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().resolve()


def _new_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"{url}: not a database URL; expected e.g. sqlite:///path/to/bitsmith.db "
                         "or postgresql+psycopg://user@host/db") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        path = _sqlite_path(url)
        if path is None:
            engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"{url}: cannot create the database directory {path.parent} ({exc.strerror}); "
                                 "expected a writable location", hint="set BITSMITH_HOME or BITSMITH_DB_URL") from None
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        _configure_sqlite(engine, wal=path is not None)
        return engine
    connect_args: dict[str, Any] = {}
    if backend == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = 10
    try:
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except Exception as exc:  # missing driver, bad options
        raise StoreError(f"{mask_url(url)}: cannot create a database engine ({exc}); "
                         "expected a sqlite:// or postgresql+psycopg:// URL") from None


def _configure_sqlite(engine: Engine, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA foreign_keys = ON")
        if wal:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write transaction takes the write lock at BEGIN, so it waits (busy_timeout) instead of
        # failing when it later upgrades a read lock that another writer invalidated.
        immediate = conn.get_execution_options().get("bitsmith_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def engine_for(url: str) -> Engine:
    """The process's engine for `url` (SQLite: directory created, WAL, busy timeout, foreign keys); no schema check."""
    with _LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            engine = _ENGINES[url] = _new_engine(url)
        return engine


def dispose_engines(url: str | None = None) -> None:
    """Close the cached engine of `url` (default: every one) and forget it (tests; before dropping a database)."""
    with _LOCK:
        for key in [url] if url is not None else list(_ENGINES):
            engine = _ENGINES.pop(key, None)
            _DATABASES.pop(key, None)
            if engine is not None:
                engine.dispose()


def _forget_after_fork() -> None:
    for engine in _ENGINES.values():
        engine.dispose(close=False)  # never close the parent's connections from the child
    _ENGINES.clear()
    _DATABASES.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _unreachable(url: str, exc: Exception) -> StoreError:
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreError(f"{mask_url(url)}: cannot reach the metadata database ({reason}); "
                      "expected a reachable database", hint="check BITSMITH_DB_URL and that the server is up")


# ---------------------------------------------------------------------------------------- alembic

def migrations_dir() -> str:
    spec = importlib.util.find_spec("bitsmith.migrations")
    if spec is None or not spec.submodule_search_locations:
        raise StoreError("bitsmith.migrations: package not found; expected an installed bitsmith")
    return list(spec.submodule_search_locations)[0]


def _alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", migrations_dir().replace("%", "%%"))
    cfg.set_main_option("version_table", VERSION_TABLE)
    cfg.attributes["connection"] = connection
    return cfg


_HEAD: list[str] = []


def head_revision() -> str:
    """The revision this bitsmith's schema is at (there is exactly one head)."""
    if not _HEAD:
        from alembic.script import ScriptDirectory

        heads = ScriptDirectory.from_config(_alembic_config()).get_heads()
        if len(heads) != 1:
            raise StoreError(f"bitsmith.migrations: {len(heads)} heads {heads}; expected exactly one")
        _HEAD.append(heads[0])
    return _HEAD[0]


def known_revisions() -> list[str]:
    """Every schema revision of this bitsmith, oldest first (the last one is the head)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions("base", head_revision())))]


def _revision_on(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return ctx.get_current_revision()


def current_revision(url: str | None = None) -> str | None:
    """The revision the database at `url` is at (None for an empty database)."""
    url = url or default_db_url()
    try:
        with engine_for(url).connect() as conn:
            return _revision_on(conn)
    except OperationalError as exc:
        raise _unreachable(url, exc) from None


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    path = _sqlite_path(url) if make_url(url).get_backend_name() == "sqlite" else None
    if path is None:
        yield
        return
    from filelock import FileLock

    with FileLock(str(path) + ".lock", timeout=600):
        yield


def _sqlite_pragma(conn: Connection, pragma: str) -> None:
    """Outside any transaction (a PRAGMA like foreign_keys is a no-op inside one)."""
    conn.connection.driver_connection.execute(f"PRAGMA {pragma}")


def _run_alembic(url: str, action: str, revision: str, *, lock: bool = True) -> None:
    from alembic import command

    engine = engine_for(url)
    try:
        with (_migration_lock(url) if lock else nullcontext()), engine.connect() as conn:
            if action == "downgrade" and engine.dialect.name == "sqlite":
                _sqlite_pragma(conn, "foreign_keys = OFF")  # drop tables in any order
            with conn.begin():
                if engine.dialect.name == "postgresql":  # one migrator at a time
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7410238912)")
                getattr(command, action)(_alembic_config(conn), revision)
            if action == "downgrade" and engine.dialect.name == "sqlite":
                _sqlite_pragma(conn, "foreign_keys = ON")
    except OperationalError as exc:
        raise _unreachable(url, exc) from None
    with _LOCK:
        _DATABASES.pop(url, None)


def upgrade_database(url: str | None = None, revision: str = "head") -> None:
    """Migrate the database at `url` up to `revision` (what `bitsmith db upgrade` runs)."""
    url = url or default_db_url()
    before = current_revision(url)
    _run_alembic(url, "upgrade", revision)
    log.info("%s: upgraded schema from %s to %s", mask_url(url), before, current_revision(url))


def downgrade_database(url: str | None = None, revision: str = "base") -> None:
    """Migrate the database at `url` down to `revision` ("base" drops every bitsmith table)."""
    _run_alembic(url or default_db_url(), "downgrade", revision)


# ---------------------------------------------------------------------------------------- open

def open_database(url: str | None = None) -> Database:
    """The database at `url` (default: `BITSMITH_DB_URL` or SQLite in the bitsmith home), at head.

    An embedded SQLite database is created and migrated on first use; a server database behind head
    raises `StoreError` naming `bitsmith db upgrade`. Cached per URL per process.
    """
    url = url or default_db_url()
    db = _DATABASES.get(url)
    if db is not None:
        return db
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            stored = stored_revision(conn)
    except OperationalError as exc:
        raise _unreachable(url, exc) from None
    if stored != SCHEMA_HEAD:
        _check_revision(url, engine)
    db = Database(url=url, engine=engine, sessionmaker=sessionmaker(engine, expire_on_commit=False))
    with _LOCK:
        _DATABASES[url] = db
    return db


def stored_revision(conn: Connection) -> str | None:
    """The revision recorded in the version table, read with plain SQL (None: no version table yet, or not
    exactly one row, which the full check below then handles)."""
    if conn.dialect.name == "sqlite":
        present = conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                       (VERSION_TABLE,)).first()
    elif conn.dialect.name == "postgresql":
        present = conn.exec_driver_sql("SELECT to_regclass(%(name)s)", {"name": VERSION_TABLE}).scalar()
    else:
        return _revision_on(conn)
    if not present:
        return None
    rows = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").all()
    return rows[0][0] if len(rows) == 1 else None


def _check_revision(url: str, engine: Engine) -> None:
    """The full migration check with Alembic: migrate an embedded database, refuse a server one behind head."""
    head = head_revision()
    try:
        with engine.connect() as conn:
            revision = _revision_on(conn)
    except OperationalError as exc:
        raise _unreachable(url, exc) from None
    if revision != head:
        if revision is not None and revision not in _known_revisions():
            raise _unknown_revision(url, revision, head)
        if engine.dialect.name != "sqlite":
            raise StoreError(f"{mask_url(url)}: schema at revision {revision or 'base (empty)'}, this bitsmith "
                             f"expects {head}; run `bitsmith db upgrade`", hint=UPGRADE_HINT)
        _ensure_embedded_at_head(url, head)


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}


def _unknown_revision(url: str, revision: str, head: str) -> StoreError:
    return StoreError(f"{mask_url(url)}: schema at revision {revision}, which this bitsmith does not know "
                      f"(it expects {head}); expected a database written by this or an older bitsmith",
                      hint="upgrade bitsmith, or point BITSMITH_DB_URL at another database")


def _ensure_embedded_at_head(url: str, head: str) -> None:
    with _migration_lock(url):
        with engine_for(url).connect() as conn:
            revision = _revision_on(conn)
        if revision == head:
            return  # another process migrated it while we waited for the lock
        if revision is not None and revision not in _known_revisions():
            raise _unknown_revision(url, revision, head)
        log.info("%s: migrating embedded database from %s to %s", mask_url(url), revision, head)
        _run_alembic(url, "upgrade", "head", lock=False)
