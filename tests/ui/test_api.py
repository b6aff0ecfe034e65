"""The JSON API and the page shells through the ASGI client, over a store made by real CLI jobs."""
from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from bitsmith.platform.ui.app import create_app
from bitsmith.platform.ui.auth import Access

from .conftest import FANOUT, GENERATIONS, HOSTILE_NAME, SERIES_POINTS


@pytest.fixture(scope="module")
def client(ui_store, ui_db) -> TestClient:
    return TestClient(create_app(ui_store.settings(), Access(), db=ui_db), base_url="http://127.0.0.1")


def test_openapi_lists_the_read_routes_and_no_write_route(client) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    for path in ("/api/runs", "/api/runs/{ref}", "/api/runs/{ref}/metrics", "/api/runs/{ref}/log", "/api/compare",
                 "/api/artifacts", "/api/artifacts/{ref}", "/api/artifacts/{digest}/download", "/api/lineage",
                 "/api/lineage/export", "/api/sweeps", "/api/sweeps/{ref}", "/api/searches/{ref}"):
        assert path in paths
    assert all(set(ops) == {"get"} for ops in paths.values())
    assert client.get("/api/info").json()["writable"] is False


def test_runs_filters_sort_and_cursor(client, ui_store) -> None:
    every = client.get("/api/runs", params={"limit": 100}).json()["rows"]
    assert len(every) == ui_store.run_count
    hits = client.get("/api/runs", params={"metric": "noop/metrics_logged >= 5", "sort": "metric:noop/value",
                                           "desc": "false"}).json()["rows"]
    expected = sorted((r for r in every if r["metrics"].get("noop/metrics_logged", 0) >= 5),
                      key=lambda r: (r["metrics"]["noop/value"], r["id"]))
    assert [r["id"] for r in hits] == [r["id"] for r in expected] and len(hits) >= 3
    two = client.get("/api/runs", params={"metric": ["noop/metrics_logged >= 3", "noop/value < 3"]}).json()["rows"]
    assert two and all(r["metrics"]["noop/metrics_logged"] >= 3 and r["metrics"]["noop/value"] < 3 for r in two)
    assert [r["id"] for r in client.get("/api/runs", params={"name": "<script"}).json()["rows"]] == [
        ui_store.hostile_run]
    first = client.get("/api/runs", params={"limit": 4}).json()
    second = client.get("/api/runs", params={"limit": 4, "cursor": first["next_cursor"]}).json()
    assert [r["id"] for r in first["rows"] + second["rows"]] == [r["id"] for r in every[:8]]


@pytest.mark.parametrize("params, field", [
    ({"metric": "noop/value <"}, "metric filter"), ({"sort": "password"}, "sort"), ({"status": "done"}, "status"),
    ({"cursor": "%%%"}, "cursor"), ({"limit": 0}, None), ({"limit": 100000}, None)])
def test_bad_runs_queries_are_400_or_422_naming_the_field(client, params, field) -> None:
    res = client.get("/api/runs", params=params)
    assert res.status_code in (400, 422)
    if field:
        assert res.status_code == 400 and field in res.json()["error"]


def test_run_metrics_log_compare(client, ui_store) -> None:
    page = client.get(f"/api/runs/{ui_store.hostile_run[:10]}").json()
    assert page["run"]["name"] == HOSTILE_NAME and page["series"] == {"noop/value": SERIES_POINTS}
    series = client.get(f"/api/runs/{ui_store.hostile_run}/metrics").json()
    assert series["counts"] == {"noop/value": SERIES_POINTS} and len(series["series"]["noop/value"]) == SERIES_POINTS
    log = client.get(f"/api/runs/{ui_store.hostile_run}/log").json()
    assert log["exists"] and log["done"]
    rest = client.get(f"/api/runs/{ui_store.hostile_run}/log", params={"offset": log["offset"]}).json()
    assert rest["text"] == "" and rest["offset"] == log["offset"]
    cmp = client.get("/api/compare", params={"run": [ui_store.hostile_run, ui_store.consumer_run]}).json()
    assert [r["id"] for r in cmp["runs"]] == [ui_store.hostile_run, ui_store.consumer_run]
    assert client.get("/api/runs/ffffffffffff").status_code == 404
    assert "not a run id" in client.get("/api/runs/nothex!").json()["error"]


def test_artifacts_where_and_download(client, ui_store) -> None:
    rows = client.get("/api/artifacts", params={"where": "size_bytes>0", "kind": "dataset"}).json()["rows"]
    assert {a["digest"] for a in rows} == {ui_store.dataset_digest, ui_store.corpus_digest}
    named = client.get("/api/artifacts", params={"where": "name==ui-texts", "kind": "dataset"}).json()["rows"]
    assert [a["digest"] for a in named] == [ui_store.corpus_digest]
    bad = client.get("/api/artifacts", params={"where": "size_bytes>>"})
    assert bad.status_code == 400 and "where" in bad.json()["error"]
    page = client.get(f"/api/artifacts/{ui_store.result_digest[:12]}").json()
    assert page["producer"]["id"] == ui_store.hostile_run and page["consumer_count"] == 1 + FANOUT
    body = client.get(f"/api/artifacts/{ui_store.result_digest}/download")
    assert body.status_code == 200 and json.loads(body.content)["payload"] == "hi"
    listed = client.get(f"/api/artifacts/{ui_store.dataset_digest}/files").json()["files"]
    assert "train.jsonl" in {f["path"] for f in listed}
    one = client.get(f"/api/artifacts/{ui_store.dataset_digest}/download", params={"path": "train.jsonl"})
    assert one.status_code == 200 and len(one.content.splitlines()) == 20


def test_lineage_and_exports(client, ui_store) -> None:
    view = client.get("/api/lineage", params={"artifact": ui_store.result_digest, "collapse": 2}).json()
    assert sum(n["kind"] == "run" for n in view["nodes"]) == 1 + 2  # producer + 2 shown consumers
    assert view["groups"][0]["count"] == 1 + FANOUT - 2
    for fmt, start in (("svg", "<svg"), ("dot", "digraph"), ("mermaid", "flowchart")):
        res = client.get("/api/lineage/export", params={"format": fmt, "run": ui_store.hostile_run})
        assert res.status_code == 200 and res.text.startswith(start)
    svg = client.get("/api/lineage/export", params={"format": "svg", "run": ui_store.hostile_run}).text
    assert "<script>" not in svg and "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    assert client.get("/api/lineage").status_code == 400
    assert client.get("/api/lineage", params={"run": ui_store.hostile_run, "depth": 99}).status_code == 422


def test_sweeps_and_search(client, ui_store) -> None:
    listed = client.get("/api/sweeps").json()["rows"]
    assert {s["id"] for s in listed} >= {ui_store.sweep_id, ui_store.flaky_sweep_id}
    seen, cursor = [], None
    while True:  # keyset pages of one sweep
        page = client.get("/api/sweeps", params={"limit": 1, **({"cursor": cursor} if cursor else {})}).json()
        seen += [s["id"] for s in page["rows"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [s["id"] for s in listed]
    bad = client.get("/api/sweeps", params={"cursor": "%%%"})
    assert bad.status_code == 400 and "cursor" in bad.json()["error"]
    sweep = client.get(f"/api/sweeps/{ui_store.sweep_id[:10]}").json()
    assert len(sweep["rows"]) == len(ui_store.sweep_runs) and any(r["pareto"] for r in sweep["rows"])
    res = client.get(f"/api/searches/{ui_store.hostile_run}")
    assert res.status_code == 400 and "expected a search run" in res.json()["error"]


def test_pages_are_shells_that_escape_the_path_and_load_only_own_assets(client, ui_store) -> None:
    for path in ("/", "/runs", f"/runs/{ui_store.hostile_run}", "/compare", "/artifacts", "/lineage", "/sweeps",
                 f"/sweeps/{ui_store.sweep_id}", f"/artifacts/{ui_store.result_digest}"):
        res = client.get(path)
        assert res.status_code == 200 and "text/html" in res.headers["content-type"]
        assert "script-src 'self'" in res.headers["content-security-policy"]
        refs = re.findall(r'(?:src|href)=["\']?([^"\' >]+)', res.text)
        assert refs and all(r.startswith("/") and not r.startswith("//") for r in refs), refs
    hostile = client.get("/runs/%22%3E%3Cscript%3Ealert(1)%3C%5Cscript%3E")  # "><script>alert(1)<\script>
    assert hostile.status_code == 200
    assert "<script>alert" not in hostile.text and '&quot;&gt;&lt;script&gt;alert(1)' in hostile.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../app.py").status_code == 404


def _outputs_json(ui_store, ui_db, run_id: str, role: str, path: str | None = None):
    from bitsmith.platform import store
    from bitsmith.platform.ui.files import read_json

    edge = next(e for e in store.run_outputs(ui_db, run_id) if e.role == role)
    return read_json(ui_db, ui_store.settings().artifact_root, edge.digest, path)


def test_a_real_search_heat_map_trajectory_and_uniform(client, ui_store, ui_db) -> None:
    from bitsmith.platform import store

    d = client.get(f"/api/searches/{ui_store.search_run[:10]}").json()
    layers = _outputs_json(ui_store, ui_db, ui_store.search_run, "allocation", "allocation.json")["layers"]
    heat = d["heat_map"]  # one cell per layer of the recorded allocation, holding its bits
    assert len(heat["blocks"]) * len(heat["kinds"]) == len(layers) >= 14
    for name, entry in layers.items():
        block = int(name.split(".layers.")[1].split(".")[0])
        kind = name.split(f".layers.{block}.")[1]
        assert heat["bits"][heat["blocks"].index(block)][heat["kinds"].index(kind)] == entry["bits"]
    assert {b for row in heat["bits"] for b in row} <= {2, 3, 4}
    logged = [(m.step, m.value) for m in store.get_metrics(ui_db, ui_store.search_run, "evo/kl") if m.step is not None]
    assert [tuple(p) for p in d["trajectory"]["evo/kl"]] == logged and len(logged) == GENERATIONS
    assert [p[0] for p in d["trajectory"]["evo/evaluations"]] == list(range(1, GENERATIONS + 1))
    report = _outputs_json(ui_store, ui_db, ui_store.search_run, "report")
    assert [r["method"] for r in d["table"]] == [r["method"] for r in report["table"]]
    rows = {r["method"]: r for r in d["table"]}
    assert {"evo", "uniform"} <= rows.keys()  # the allocation beside uniform, at the same budget
    assert rows["evo"]["avg_bits"] == pytest.approx(3.0) and rows["uniform"]["avg_bits"] == pytest.approx(3.0)
    finals = client.get(f"/api/runs/{ui_store.search_run}").json()["run"]["metrics"]  # the metric rows agree
    assert rows["uniform"]["test_token_ppl"] == finals["uniform/test/token_ppl"]
    assert rows["evo"]["test_token_ppl"] == finals["test/token_ppl"]


def test_a_cache_hit_shows_its_originals_series(client, ui_store) -> None:
    original = client.get(f"/api/searches/{ui_store.search_run}").json()
    hit = client.get(f"/api/searches/{ui_store.search_hit}").json()
    assert hit["run_id"] == ui_store.search_hit and hit["series_of"] == ui_store.search_run
    assert hit["trajectory"] == original["trajectory"] and hit["heat_map"] == original["heat_map"]
    page = client.get(f"/api/runs/{ui_store.search_hit}").json()
    assert page["run"]["cache_hit_of"] == ui_store.search_run and page["series_of"] == ui_store.search_run
    assert page["series"] == {"evo/kl": GENERATIONS, "evo/evaluations": GENERATIONS}
    series = client.get(f"/api/runs/{ui_store.search_hit}/metrics").json()
    assert series["counts"] == page["series"]
