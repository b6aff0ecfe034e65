"""Store fixtures: real databases, an embedded SQLite file and (where it answers) a fresh PostgreSQL database.

`db` is parametrized over both; the PostgreSQL parameter is marked `postgres` and skips when
127.0.0.1:5432 does not answer within a second. Each PostgreSQL test gets its own database, copied
from a migrated template made once per session, and dropped afterwards.
"""
from __future__ import annotations

import shutil
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from bitsmith.platform.store import Database, dispose_engines, open_database, upgrade_database

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_BASE = f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}"
PG_ADMIN_DSN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/test"


def postgres_answers() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1):
            return True
    except OSError:
        return False


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def pg_available() -> bool:
    return postgres_answers()


@pytest.fixture
def make_pg_url(pg_available: bool) -> Iterator:
    """Factory: a fresh, uniquely named, empty PostgreSQL database URL (dropped after the test)."""
    if not pg_available:
        pytest.skip(f"PostgreSQL does not answer at {PG_HOST}:{PG_PORT}")
    created: list[str] = []

    def make(template: str | None = None) -> str:
        name = f"bitsmith_test_{uuid.uuid4().hex[:12]}"
        _admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        created.append(name)
        return f"{PG_BASE}/{name}"

    yield make
    for name in created:
        dispose_engines(f"{PG_BASE}/{name}")
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_template(pg_available: bool) -> Iterator[str]:
    """A PostgreSQL database migrated to head, used as the template for each test's database."""
    if not pg_available:
        pytest.skip(f"PostgreSQL does not answer at {PG_HOST}:{PG_PORT}")
    name = f"bitsmith_tmpl_{uuid.uuid4().hex[:12]}"
    url = f"{PG_BASE}/{name}"
    _admin(f'CREATE DATABASE "{name}"')
    upgrade_database(url)
    dispose_engines(url)  # a template must have no open connections
    yield name
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded database migrated to head, copied for each test (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "bitsmith.db"
    url = f"sqlite:///{path}"
    open_database(url)
    dispose_engines(url)
    with closing(sqlite3.connect(path)) as conn:  # fold the WAL into the main file before copying
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a database at head: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path / "db" / "bitsmith.db"
        path.parent.mkdir()
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
        yield url
        dispose_engines(url)
    else:
        template = request.getfixturevalue("pg_template")
        yield request.getfixturevalue("make_pg_url")(template)


@pytest.fixture
def db(db_url: str) -> Database:
    return open_database(db_url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """The URL of a SQLite file that does not exist yet."""
    url = f"sqlite:///{tmp_path / 'home' / 'bitsmith.db'}"
    yield url
    dispose_engines(url)

