"""The page views read from a store made by real jobs: runs, run, series, lineage, sweep, artifacts, compare."""
from __future__ import annotations

import pytest

from bitsmith.platform.errors import UsageError
from bitsmith.platform.ui import graph, sweepviews, views
from bitsmith.platform.ui.runquery import RunQuery, parse_metric_filter

from .conftest import FANOUT, HOSTILE_NAME, SERIES_POINTS


def test_runs_page_filters_sorts_and_pages(ui_store, ui_db) -> None:
    every = views.runs_page(ui_db, RunQuery(limit=100))["rows"]
    assert len(every) == ui_store.run_count
    assert [r["id"] for r in views.runs_page(ui_db, RunQuery(tag="demo"))["rows"]] == [ui_store.hostile_run]
    assert [r["id"] for r in views.runs_page(ui_db, RunQuery(name_contains="<script>"))["rows"]] == [
        ui_store.hostile_run]
    assert {r["id"] for r in views.runs_page(ui_db, RunQuery(sweep_id=ui_store.sweep_id))["rows"]} == set(
        ui_store.sweep_runs)
    low = views.runs_page(ui_db, RunQuery(metric_filters=(parse_metric_filter("noop/metrics_logged < 4"),)))["rows"]
    assert low and all(r["metrics"]["noop/metrics_logged"] < 4 for r in low)
    assert len(low) == sum(1 for r in every if r["metrics"].get("noop/metrics_logged", 99) < 4)
    ordered = views.runs_page(ui_db, RunQuery(sort="metric:noop/metrics_logged", descending=False))["rows"]
    values = [r["metrics"]["noop/metrics_logged"] for r in ordered]
    assert values == sorted(values)
    seen, cursor = [], None
    while True:  # keyset pages of 3 cover every run exactly once
        page = views.runs_page(ui_db, RunQuery(limit=3, cursor=cursor))
        seen += [r["id"] for r in page["rows"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [r["id"] for r in every]


def test_bad_queries_are_usage_errors(ui_db) -> None:
    for bad in ("noop/value <", "< 3", "noop/value ~ 3", "noop/value < nan", "x < abc"):
        with pytest.raises(UsageError, match="metric filter"):
            parse_metric_filter(bad)
    with pytest.raises(UsageError, match="sort"):
        views.runs_page(ui_db, RunQuery(sort="password"))
    with pytest.raises(UsageError, match="cursor"):
        views.runs_page(ui_db, RunQuery(cursor="!!notacursor"))


def test_run_page_series_and_log(ui_store, ui_db) -> None:
    page = views.run_page(ui_db, ui_store.hostile_run[:10])
    assert page["run"]["name"] == HOSTILE_NAME and page["series"] == {"noop/value": SERIES_POINTS}
    assert [e["to_status"] for e in page["events"]] == ["queued", "running", "succeeded"]
    assert page["outputs"][0]["digest"] == ui_store.result_digest and "payload: hi" in page["spec_yaml"]
    assert page["code_version"] and "python" in page["environment"]
    series = views.metric_series(ui_db, ui_store.hostile_run)["series"]["noop/value"]
    assert series == [[i, float(i)] for i in range(SERIES_POINTS)]
    log = views.log_chunk(ui_db, ui_store.settings(), ui_store.hostile_run)
    assert log["exists"] and ui_store.hostile_run in log["text"] and log["done"]
    consumer = views.run_page(ui_db, ui_store.consumer_run)
    assert consumer["inputs"][0]["digest"] == ui_store.result_digest


def test_lineage_graph_up_and_down_and_exports(ui_store, ui_db) -> None:
    view = graph.lineage_graph(ui_db, artifact=ui_store.result_digest)
    ids = {n["id"] for n in view["nodes"]}
    assert f"run:{ui_store.hostile_run}" in ids and f"run:{ui_store.consumer_run}" in ids
    assert {"from": f"artifact:{ui_store.result_digest}", "to": f"run:{ui_store.consumer_run}",
            "role": "data"} in view["edges"]
    svg, media = graph.export(ui_db, "svg", artifact=ui_store.result_digest)
    assert media == "image/svg+xml" and "&lt;script&gt;" in svg and "<script>" not in svg
    assert graph.export(ui_db, "dot", run=ui_store.consumer_run)[0].startswith("digraph")
    assert graph.export(ui_db, "mermaid", run=ui_store.consumer_run)[0].startswith("flowchart")


def test_lineage_collapses_siblings_past_the_threshold(ui_store, ui_db) -> None:
    consumers = 1 + FANOUT
    full = graph.lineage_graph(ui_db, artifact=ui_store.result_digest, direction="down", depth=1, collapse=8)
    assert not full["groups"] and sum(n["kind"] == "run" for n in full["nodes"]) == consumers
    view = graph.lineage_graph(ui_db, artifact=ui_store.result_digest, direction="down", depth=1, collapse=2)
    assert sum(n["kind"] == "run" for n in view["nodes"]) == 2
    assert [(g["count"], g["direction"]) for g in view["groups"]] == [(consumers - 2, "down")]
    more = next(n for n in view["nodes"] if n["kind"] == "more")
    assert more["label"] == f"+{consumers - 2} more"


def test_sweep_page_marks_the_pareto_front(ui_store, ui_db) -> None:
    page = sweepviews.sweep_page(ui_db, ui_store.sweep_id)
    assert page["parameters"] == ["metrics", "payload"] and len(page["rows"]) == len(ui_store.sweep_runs)
    front = [r for r in page["rows"] if r["pareto"]]
    assert front and all(r["status"] == "succeeded" for r in front)
    listed = sweepviews.sweeps_list(ui_db)["rows"]
    assert [r["id"] for r in listed[:2]] == [ui_store.flaky_sweep_id, ui_store.sweep_id]
    assert [r["children"] for r in listed] == [len(ui_store.flaky_runs), len(ui_store.sweep_runs), FANOUT]
    first = sweepviews.sweeps_list(ui_db, limit=2)
    rest = sweepviews.sweeps_list(ui_db, limit=2, cursor=first["next_cursor"])
    assert [r["id"] for r in first["rows"] + rest["rows"]] == [r["id"] for r in listed] and not rest["next_cursor"]


def test_artifacts_and_compare(ui_store, ui_db) -> None:
    rows = views.artifacts_page(ui_db, kind="result", where=[], limit=500, cursor=None)["rows"]
    assert ui_store.result_digest in {a["digest"] for a in rows}
    first = views.artifacts_page(ui_db, kind=None, where=[], limit=2, cursor=None)
    second = views.artifacts_page(ui_db, kind=None, where=[], limit=500, cursor=first["next_cursor"])
    every = views.artifacts_page(ui_db, kind=None, where=[], limit=500, cursor=None)["rows"]
    assert [a["digest"] for a in first["rows"] + second["rows"]] == [a["digest"] for a in every]
    page = views.artifact_page(ui_db, ui_store.result_digest[:12])
    assert page["producer"]["id"] == ui_store.hostile_run
    assert {"run_id": ui_store.consumer_run, "role": "data"} in page["consumers"]
    assert page["consumer_count"] == 1 + FANOUT
    cmp = views.compare_page(ui_db, [ui_store.hostile_run, ui_store.consumer_run])
    assert {d["field"] for d in cmp["spec_diff"]} >= {"name", "metrics"}
    assert cmp["series"][ui_store.hostile_run] == ["noop/value"]
