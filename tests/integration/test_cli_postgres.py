"""The real CLI on PostgreSQL: never migrated silently, then the full submit/lineage path works."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.postgres
PG = ("127.0.0.1", 5432)


def test_cli_on_postgres(tmp_path, pg_url, make_cli) -> None:
    cli = make_cli(tmp_path / "home", {"BITSMITH_DB_URL": pg_url})
    refused = cli("runs", "list", check=False)
    assert refused.code == 3 and "bitsmith db upgrade" in refused.err
    assert cli("db", "current", "--json").json()["up_to_date"] is False
    cli("db", "upgrade")
    spec = cli.write_spec("pg.yaml", "kind: noop\nname: on-pg\nmetrics: 3\n")
    first = cli("submit", spec, "--executor", "local", "--wait", "--json").json()
    assert first["status"] == "succeeded"
    again = cli("submit", spec, "--executor", "local", "--wait", "--json").json()
    assert again["cache_hit_of"] == first["run_id"]
    digest = first["outputs"]["result"]
    consumer = cli.write_spec("c.yaml", "kind: noop\nname: consumer\ninputs: {data: on-pg/result}\n")
    second = cli("submit", consumer, "--executor", "local", "--wait", "--json").json()
    tree = cli("lineage", f"run:{second['run_id'][:10]}").out
    assert "on-pg" in tree and digest[:12] in tree
    down = cli("lineage", digest[:12], "--down", "--json").json()
    assert second["run_id"] in down["runs"]
