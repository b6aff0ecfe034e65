"""Alembic environment for bitsmith's metadata store (version table `bitsmith_alembic_version`).

bitsmith runs migrations from code and hands its connection in `config.attributes["connection"]`;
the `alembic` CLI (with the alembic.ini next to this file) connects to `sqlalchemy.url`, else to
`BITSMITH_DB_URL`, else to the embedded default database.
"""
from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from bitsmith.platform.config import default_db_url
from bitsmith.platform.store.engine import dispose_engines, engine_for
from bitsmith.platform.store.schema import Base

VERSION_TABLE = "bitsmith_alembic_version"
config = context.config
if config.config_file_name is not None:  # the `alembic` CLI: log as alembic.ini says
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = Base.metadata


def _options(dialect_name: str) -> dict:
    return {
        "target_metadata": target_metadata,
        "version_table": VERSION_TABLE,
        "compare_type": True,
        "render_as_batch": dialect_name == "sqlite",  # SQLite alters tables by copying them
    }


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or default_db_url()


def run_offline() -> None:
    url = _url()
    context.configure(url=url, literal_binds=True, **_options(url.split(":", 1)[0].split("+")[0]))
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **_options(connection.dialect.name))
        with context.begin_transaction():
            context.run_migrations()
        return
    url = _url()
    with engine_for(url).connect() as connection:  # bitsmith's engine: creates the SQLite dir, sets pragmas
        context.configure(connection=connection, **_options(connection.dialect.name))
        with context.begin_transaction():
            context.run_migrations()
    dispose_engines(url)


if context.is_offline_mode():
    run_offline()
else:
    run_online()
