"""The same API over a PostgreSQL store filled by real CLI jobs (skipped where no server answers at 127.0.0.1:5432)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from .conftest import ROOT

pytestmark = pytest.mark.postgres


def test_api_over_postgres(pg_url, tmp_path) -> None:
    from bitsmith.platform import store
    from bitsmith.platform.config import Settings
    from bitsmith.platform.ui.app import create_app

    home = tmp_path / "home"
    env = {**os.environ, "BITSMITH_HOME": str(home), "BITSMITH_DB_URL": pg_url,
           "BITSMITH_ARTIFACT_ROOT": str(home / "artifacts"), "RAY_USAGE_STATS_ENABLED": "0",
           "BITSMITH_NO_PROGRESS": "1"}
    cli = [sys.executable, "-m", "bitsmith.platform.cli.main"]
    subprocess.run([*cli, "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    ids = []
    for name, metrics in (("pg-a", 4), ("pg-b", 7)):
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(json.dumps({"kind": "noop", "name": name, "metrics": metrics, "payload": name}))
        res = subprocess.run([*cli, "submit", str(spec), "--executor", "local", "--wait", "--json"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        ids.append(json.loads(res.stdout)["run_id"])
    settings = Settings(db_url=pg_url, artifact_root=str(home / "artifacts"), home=home)
    client = TestClient(create_app(settings, db=store.open_database(pg_url)), base_url="http://127.0.0.1")
    rows = client.get("/api/runs", params={"sort": "metric:noop/metrics_logged", "desc": "true"}).json()["rows"]
    assert [r["id"] for r in rows] == [ids[1], ids[0]]
    assert [r["id"] for r in client.get("/api/runs", params={"metric": "noop/value > 4"}).json()["rows"]] == [ids[1]]
    page = client.get(f"/api/runs/{ids[0]}").json()
    assert page["series"] == {"noop/value": 4}
    digest = page["outputs"][0]["digest"]
    assert client.get(f"/api/artifacts/{digest}/download").json()["payload"] == "pg-a"
    view = client.get("/api/lineage", params={"run": ids[0]}).json()
    assert f"artifact:{digest}" in {n["id"] for n in view["nodes"]}
