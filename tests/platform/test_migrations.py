"""Alembic migrations: one head, the migrated schema equals the ORM metadata, round trips, safe opening."""
from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from bitsmith.platform.errors import StoreError
from bitsmith.platform.store import (create_run, current_revision, dispose_engines, downgrade_database, get_run,
                                     head_revision, open_database, upgrade_database)
from bitsmith.platform.store.engine import SCHEMA_HEAD, VERSION_TABLE, _alembic_config, engine_for, stored_revision
from bitsmith.platform.store.schema import Base

TABLES = {"runs", "artifacts", "run_inputs", "run_outputs", "metrics", "sweeps", "run_events", "artifact_names",
          "dispatchers", "run_metric_finals"}


def schema_diffs(url: str) -> list:
    with engine_for(url).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "version_table": VERSION_TABLE})
        return compare_metadata(ctx, Base.metadata)


def table_names(url: str) -> set[str]:
    return set(inspect(engine_for(url)).get_table_names())


def test_exactly_one_head():
    heads = ScriptDirectory.from_config(_alembic_config()).get_heads()
    assert heads == [head_revision()]


def test_migrated_schema_equals_orm_metadata(db_url):
    assert current_revision(db_url) == head_revision()
    assert schema_diffs(db_url) == []
    assert TABLES | {VERSION_TABLE} == table_names(db_url)


def _fresh_url(request, tmp_path: Path, backend: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'rt.db'}"
    return request.getfixturevalue("make_pg_url")()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_upgrade_downgrade_round_trip_keeps_rows_until_base(request, tmp_path, backend):
    url = _fresh_url(request, tmp_path, backend)
    assert current_revision(url) is None
    upgrade_database(url)
    assert current_revision(url) == head_revision()
    run = create_run(open_database(url), kind="eval", name=None, spec={}, spec_hash="h", cache_key="k", seed=1,
                     code_version={}, tags=(), executor=None, max_retries=0, inputs={})
    upgrade_database(url)  # already at head: harmless, rows survive
    assert get_run(open_database(url), run.id).id == run.id
    downgrade_database(url, "base")
    assert current_revision(url) is None and table_names(url) <= {VERSION_TABLE}
    upgrade_database(url)
    assert current_revision(url) == head_revision() and schema_diffs(url) == []
    dispose_engines(url)


def test_embedded_database_is_created_and_reopened_harmlessly(sqlite_url):
    db = open_database(sqlite_url)
    assert Path(db.engine.url.database).exists() and current_revision(sqlite_url) == head_revision()
    run = create_run(db, kind="eval", name=None, spec={}, spec_hash="h", cache_key="k", seed=1, code_version={},
                     tags=(), executor=None, max_retries=0, inputs={})
    dispose_engines(sqlite_url)
    again = open_database(sqlite_url)
    assert again is not db and get_run(again, run.id) == run
    with again.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 30_000


def _open_and_write(url: str) -> str:
    db = open_database(url)
    run = create_run(db, kind="eval", name=None, spec={}, spec_hash="h", cache_key="k", seed=1, code_version={},
                     tags=(), executor=None, max_retries=0, inputs={})
    return run.id


def test_embedded_database_opened_by_four_processes_at_once(sqlite_url):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        ids = pool.map(_open_and_write, [sqlite_url] * 4)
    db = open_database(sqlite_url)
    assert current_revision(sqlite_url) == head_revision()
    assert [get_run(db, run_id).id for run_id in ids] == ids


@pytest.mark.postgres
def test_server_database_behind_head_is_refused(make_pg_url):
    url = make_pg_url()
    with pytest.raises(StoreError, match="schema at revision base .* expects .*run `bitsmith db upgrade`") as info:
        open_database(url)
    assert "bitsmith db upgrade" in info.value.hint
    assert current_revision(url) is None and table_names(url) == set()  # never migrated silently
    upgrade_database(url)
    assert open_database(url).url == url


def test_unreachable_database_names_the_url_without_password():
    url = "postgresql+psycopg://bob:secret@127.0.0.1:1/nowhere?connect_timeout=1"
    with pytest.raises(StoreError, match=r"bob:\*\*\*@127.0.0.1:1/nowhere.*cannot reach") as info:
        open_database(url)
    assert "secret" not in str(info.value)
    dispose_engines(url)


def test_embedded_database_from_a_newer_bitsmith_is_refused(sqlite_url):
    open_database(sqlite_url)
    with engine_for(sqlite_url).begin() as conn:
        conn.exec_driver_sql(f"UPDATE {VERSION_TABLE} SET version_num = 'f00d'")
    dispose_engines(sqlite_url)
    with pytest.raises(StoreError, match="revision f00d, which this bitsmith does not know"):
        open_database(sqlite_url)


def test_schema_head_constant_is_alembics_head():
    """The fast open path trusts SCHEMA_HEAD; a new migration without updating it fails here."""
    assert ScriptDirectory.from_config(_alembic_config()).get_heads() == [SCHEMA_HEAD]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_stored_revision_reads_what_alembic_reads(request, tmp_path, backend):
    url = _fresh_url(request, tmp_path, backend)
    with engine_for(url).connect() as conn:
        assert stored_revision(conn) is None  # no version table yet
    upgrade_database(url, "0006")
    with engine_for(url).connect() as conn:
        assert stored_revision(conn) == current_revision(url) == "0006"
    upgrade_database(url)
    with engine_for(url).connect() as conn:
        assert stored_revision(conn) == current_revision(url) == SCHEMA_HEAD
    dispose_engines(url)


def test_opening_a_database_at_head_does_not_import_alembic(sqlite_url):
    open_database(sqlite_url)  # created and migrated here (this process has Alembic loaded anyway)
    dispose_engines(sqlite_url)
    code = ("import sys; from bitsmith.platform.store import open_database, list_runs; "
            f"db = open_database({sqlite_url!r}); list_runs(db); print(sorted(m for m in sys.modules "
            "if m.split('.')[0] == 'alembic'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_embedded_database_behind_head_is_upgraded_on_open(sqlite_url):
    upgrade_database(sqlite_url, "0006")
    dispose_engines(sqlite_url)
    open_database(sqlite_url)
    assert current_revision(sqlite_url) == SCHEMA_HEAD


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_upgrade_to_0007_backfills_each_runs_final_metrics(request, tmp_path, backend):
    import math
    import random

    from sqlalchemy import insert

    from bitsmith.platform.store import final_metrics
    from bitsmith.platform.store.metrics import compute_final_metrics, metric_rows
    from bitsmith.platform.store.runs import _new_run_rows
    from bitsmith.platform.store.schema import metrics_t, runs_t

    url = _fresh_url(request, tmp_path, backend)
    upgrade_database(url, "0006")
    rng, ids = random.Random(5), []
    with engine_for(url).begin() as conn:
        for i in range(8):
            values, _, _ = _new_run_rows(kind="eval", name=f"r{i}", spec={}, spec_hash="h", cache_key="k", seed=1,
                                         code_version={}, tags=(), executor=None, max_retries=0, inputs=None,
                                         sweep_id=None, cache_hit_of=None, status="succeeded", run_id=None,
                                         message=None)
            conn.execute(insert(runs_t).values(**values))
            ids.append(values["id"])
            for attempt in sorted(rng.sample([0, 1, 2], 2)):
                batch = [(rng.choice(["a", "b"]), rng.choice([None, 1, 3, 3]), rng.choice([rng.random(), math.nan]))
                         for _ in range(5)]
                conn.execute(insert(metrics_t), metric_rows(values["id"], attempt, batch))
    upgrade_database(url)
    db = open_database(url)
    with db.transaction() as conn:
        expected = compute_final_metrics(conn, ids)
    got = final_metrics(db, ids)
    assert got.keys() == expected.keys() and all(got[r].keys() == expected[r].keys() for r in ids)
    assert all(got[r][k] == v or (math.isnan(got[r][k]) and math.isnan(v)) for r in ids for k, v in expected[r].items())
    assert any(expected[r] for r in ids)
    dispose_engines(url)
