"""`bitsmith report`: one self-contained HTML file (no external reference), drawn offline by a real browser."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import GENERATIONS, HOSTILE_NAME, SERIES_POINTS

CHROMIUM = Path("/usr/bin/chromium")


def _report(ui_store, ref: str, out: Path) -> str:
    res = ui_store.cli("report", ref, "-o", str(out))
    assert res.returncode == 0, res.stderr
    return out.read_text(encoding="utf-8")


def test_report_files_reference_nothing_outside_themselves(ui_store, tmp_path) -> None:
    for ref in (ui_store.hostile_run[:10], ui_store.sweep_id, ui_store.search_run):
        html = _report(ui_store, ref, tmp_path / "r.html")
        assert not re.search(r"<(?:link|img|iframe|object|embed)\b", html)
        assert not re.search(r"<script[^>]*\bsrc=", html) and not re.search(r"\b(?:src|href)=[\"']?(?:https?:)?//",
                                                                              html)
        assert "@import" not in html and "url(" not in html
        assert "<script>alert" not in html  # the hostile run name is inlined as escaped JSON only


def test_report_errors_are_clear(ui_store, tmp_path) -> None:
    res = ui_store.cli("report", "ffffffffffff", "-o", str(tmp_path / "x.html"))
    assert res.returncode == 2 and "no run or sweep" in res.stderr and "Traceback" not in res.stderr
    res = ui_store.cli("report", ui_store.hostile_run, "-o", str(tmp_path / "missing" / "x.html"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    assert not (tmp_path / "x.html").exists()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (Debian's chromium package)")
def test_a_report_draws_offline_in_a_browser(ui_store, tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    run_file, sweep_file, search_file = tmp_path / "run.html", tmp_path / "sweep.html", tmp_path / "search.html"
    _report(ui_store, ui_store.hostile_run, run_file)
    _report(ui_store, ui_store.sweep_id, sweep_file)
    _report(ui_store, ui_store.search_hit, search_file)  # a cache hit: its original's trajectory
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            requests, problems = [], []
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("dialog", lambda d: (problems.append(d.message), d.dismiss()))
            page.goto(run_file.as_uri())
            page.wait_for_selector("body[data-ready='1']")
            assert page.locator("h1").text_content().startswith(HOSTILE_NAME)
            chart = page.locator(".chart-card[data-metric='noop/value'] polyline.series")
            chart.wait_for()
            assert chart.get_attribute("data-points") == str(SERIES_POINTS)
            page.locator("g.node").first.wait_for()  # the lineage graph, inline
            page.goto(sweep_file.as_uri())
            page.wait_for_selector("body[data-ready='1']")
            assert page.locator("#pareto circle.pt").count() >= 1
            assert page.locator("#children tbody tr").count() == len(ui_store.sweep_runs)
            page.goto(search_file.as_uri())
            page.wait_for_selector("body[data-ready='1']")
            assert page.locator("#heat rect.cell").count() >= 14  # the search views below the run's
            evo = page.locator("#trajectory .chart-card[data-metric='evo/kl'] polyline.series")
            assert evo.get_attribute("data-points") == str(GENERATIONS)
            assert {"evo", "uniform"} <= {r.locator("td").first.text_content()
                                          for r in page.locator("#vs-uniform tbody tr").all()}
            assert set(requests) == {f.as_uri() for f in (run_file, sweep_file, search_file)}, requests
            assert not problems, problems
        finally:
            browser.close()
