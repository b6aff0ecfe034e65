"""The pages in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright) against a real
`bitsmith ui` server over a store made by real jobs; a screenshot of each page goes to BITSMITH_UI_SCREENSHOTS
(default: a temporary folder; `BITSMITH_UI_SCREENSHOTS=docs/img` refreshes the README's images)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import FANOUT, HOSTILE_NAME, ROOT, SERIES_POINTS

CHROMIUM = Path("/usr/bin/chromium")
playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (Debian's chromium package)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bitsmith.platform.cli.main", "ui", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{base}/api/info", timeout=2)
            return proc, base
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"bitsmith ui did not start: {proc.stderr.read().decode()}") from None
            time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def server(ui_store):
    proc, base = start_server(ui_store.env)
    yield base
    stop(proc)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("BITSMITH_UI_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    pg.problems = []  # script errors, console errors and any dialog (an executed alert() would be one)
    pg.on("pageerror", lambda e: pg.problems.append(f"pageerror: {e}"))
    pg.on("console", lambda m: pg.problems.append(f"console: {m.text}") if m.type == "error" else None)
    pg.on("dialog", lambda d: (pg.problems.append(f"dialog: {d.message}"), d.dismiss()))
    yield pg
    context.close()


def ready(pg) -> None:
    pg.wait_for_selector("body[data-ready='1']", timeout=15000)
    assert not pg.locator("#error").count(), pg.locator("#error").text_content()


def test_runs_page_filter_then_open_a_run_and_its_chart(server, page, ui_store, shots) -> None:
    page.goto(f"{server}/runs")
    ready(page)
    total = 2 + FANOUT + len(ui_store.sweep_runs)
    assert page.locator("#runs tbody tr").count() == total
    page.screenshot(path=str(shots / "runs.png"))
    page.fill("input[name=metric]", "noop/metrics_logged >= 5")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**metric=**")
    ready(page)
    expected = httpx.get(f"{server}/api/runs", params={"metric": "noop/metrics_logged >= 5"}).json()["rows"]
    assert page.locator("#runs tbody tr").count() == len(expected) >= 3
    page.fill("input[name=metric]", "")
    page.fill("input[name=name]", "<script>")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**name=**")
    ready(page)
    rows = page.locator("#runs tbody tr")
    assert rows.count() == 1 and rows.first.locator("td[data-col=name]").text_content() == HOSTILE_NAME
    rows.first.locator("a").first.click()
    page.wait_for_url(f"**/runs/{ui_store.hostile_run}")
    ready(page)
    assert page.locator("h1").text_content().startswith(HOSTILE_NAME)  # the name is text, not markup
    chart = page.locator(".chart-card[data-metric='noop/value']")
    chart.wait_for()
    assert chart.locator("polyline.series").get_attribute("data-points") == str(SERIES_POINTS)
    assert chart.locator("circle.pt").count() == SERIES_POINTS
    expect = playwright_api.expect
    expect(page.locator("#log")).to_contain_text("succeeded")
    assert ui_store.hostile_run in page.locator("#log").text_content()
    assert page.locator("#events tbody tr").count() == 3
    page.screenshot(path=str(shots / "run.png"), full_page=True)
    assert not page.problems, page.problems


def test_lineage_graph_follow_an_edge_and_expand_collapsed_siblings(server, page, ui_store, shots) -> None:
    page.goto(f"{server}/lineage?run={ui_store.consumer_run}&collapse=2")
    ready(page)
    root = page.locator("g.node[data-root='1']")
    assert root.get_attribute("data-id") == f"run:{ui_store.consumer_run}"
    page.locator(f"g.node[data-id='artifact:{ui_store.result_digest}']").click()  # follow the input edge
    page.wait_for_url(f"**artifact={ui_store.result_digest}**")
    ready(page)
    assert page.locator("g.node[data-root='1']").get_attribute("data-id") == f"artifact:{ui_store.result_digest}"
    consumers = 1 + FANOUT
    assert page.locator("g.node-run").count() == 1 + 2  # the producer and 2 of the consumers
    more = page.locator("g.node-more")
    assert more.count() == 1 and f"+{consumers - 2} more" in more.text_content()
    page.screenshot(path=str(shots / "lineage.png"))
    more.click()
    page.wait_for_url("**collapse=8**")
    ready(page)
    assert page.locator("g.node-run").count() == 1 + consumers and page.locator("g.node-more").count() == 0
    svg = httpx.get(f"{server}{page.locator('a.export-svg').get_attribute('href')}")
    assert svg.status_code == 200 and svg.text.startswith("<svg")
    assert not page.problems, page.problems


def test_sweep_pareto_plot_hover_and_click_to_the_run(server, page, ui_store, shots) -> None:
    page.goto(f"{server}/sweeps/{ui_store.sweep_id}")
    ready(page)
    sweep = httpx.get(f"{server}/api/sweeps/{ui_store.sweep_id}").json()
    points = page.locator("#pareto circle.pt")
    assert points.count() == sum(1 for r in sweep["rows"] if r["status"] == "succeeded")
    front = page.locator("#pareto circle.front")
    assert front.count() == sum(1 for r in sweep["rows"] if r["pareto"]) >= 1
    first = front.last  # the topmost of points drawn at the same place
    run_id = first.get_attribute("data-run")
    first.hover()
    assert page.locator(".tip").is_visible() and run_id[:12] in page.locator(".tip").text_content()
    assert page.locator("#parallel polyline").count() == len(sweep["rows"])
    page.screenshot(path=str(shots / "sweep.png"), full_page=True)
    first.click()
    page.wait_for_url(f"**/runs/{run_id}")
    ready(page)
    assert not page.problems, page.problems


def test_compare_and_artifact_pages(server, page, ui_store, shots) -> None:
    page.goto(f"{server}/compare?run={ui_store.hostile_run}&run={ui_store.consumer_run}")
    ready(page)
    page.locator("#curves .chart-card").first.wait_for()
    assert page.locator("#curves .chart-card[data-metric='noop/value'] polyline.series").count() == 2
    page.screenshot(path=str(shots / "compare.png"), full_page=True)
    page.goto(f"{server}/artifacts/{ui_store.dataset_digest}")
    ready(page)
    link = page.get_by_role("link", name="train.jsonl")
    link.wait_for()
    assert page.locator("#metadata").count() == 1
    got = httpx.get(f"{server}{link.get_attribute('href')}")
    assert got.status_code == 200 and len(got.content.splitlines()) == 20
    assert not page.problems, page.problems


def test_live_status_while_a_run_changes(browser, tmp_path, shots) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "BITSMITH_HOME": str(home), "BITSMITH_DB_URL": f"sqlite:///{home / 'bitsmith.db'}",
           "BITSMITH_ARTIFACT_ROOT": str(home / "artifacts"), "RAY_USAGE_STATS_ENABLED": "0",
           "BITSMITH_NO_PROGRESS": "1"}
    spec = tmp_path / "slow.yaml"
    spec.write_text(json.dumps({"kind": "noop", "name": "slow", "sleep_s": 6}))
    subprocess.run([sys.executable, "-m", "bitsmith.platform.cli.main", "db", "upgrade"], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=120)
    proc, base = start_server(env)
    job = None
    context = browser.new_context()
    try:
        pg = context.new_page()
        pg.goto(f"{base}/runs")
        ready(pg)
        assert pg.locator("#runs-empty").count() == 1
        job = subprocess.Popen([sys.executable, "-m", "bitsmith.platform.cli.main", "submit", str(spec),
                                "--executor", "local", "--wait"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        status = pg.locator("#runs tbody tr td[data-col=status]")
        status.wait_for(timeout=30000)  # the page re-reads itself: the new run appears without a reload
        assert status.text_content() in ("queued", "running")
        playwright_api.expect(status).to_have_text("succeeded", timeout=60000)
        assert job.wait(timeout=60) == 0
    finally:
        context.close()
        if job is not None and job.poll() is None:
            job.kill()
        stop(proc)
