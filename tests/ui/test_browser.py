"""The pages in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright) against a real
`bitsmith ui` server over a store made by real jobs; a screenshot of each page goes to BITSMITH_UI_SCREENSHOTS
(default: a temporary folder; `BITSMITH_UI_SCREENSHOTS=docs/img` refreshes the README's images)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import FANOUT, GENERATIONS, HOSTILE_NAME, ROOT, SERIES_POINTS

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
    total = ui_store.run_count
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
    for fmt, start in (("svg", "<svg"), ("dot", "digraph"), ("mermaid", "flowchart")):
        got = httpx.get(f"{server}{page.locator(f'a.export-{fmt}').get_attribute('href')}")
        assert got.status_code == 200 and got.text.startswith(start)
        assert all(r[:12] in got.text for r in (ui_store.hostile_run, ui_store.consumer_run))
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
    page.goto(f"{server}/sweeps?limit=1")  # the sweeps list, one per keyset page
    ready(page)
    page.screenshot(path=str(shots / "sweeps.png"))
    listed = []
    while True:
        listed += [r.get_attribute("href").rsplit("/", 1)[1] for r in page.locator("#sweeps tbody tr a").all()]
        if not page.locator("#next-page").count():
            break
        page.click("#next-page")
        page.wait_for_load_state()
        ready(page)
    assert listed == [x["id"] for x in httpx.get(f"{server}/api/sweeps").json()["rows"]] and len(listed) == 3
    assert not page.problems, page.problems


def test_compare_and_artifact_pages(server, page, ui_store, shots) -> None:
    page.goto(f"{server}/compare?run={ui_store.hostile_run}&run={ui_store.consumer_run}")
    ready(page)
    page.locator("#curves .chart-card").first.wait_for()
    curves = page.locator("#curves .chart-card[data-metric='noop/value'] polyline.series")
    assert [c.get_attribute("data-points") for c in curves.all()] == [str(SERIES_POINTS), "3"]  # overlaid
    cmp = httpx.get(f"{server}/api/compare", params={"run": [ui_store.hostile_run, ui_store.consumer_run]}).json()
    finals = {r.locator("td").first.text_content(): [c.text_content() for c in r.locator("td.num").all()]
              for r in page.locator("#compare-metrics tbody tr").all()}  # final metrics side by side
    assert list(finals) == cmp["metric_keys"] and finals["noop/metrics_logged"] == [str(SERIES_POINTS), "3"]
    diff = {r.locator("td").first.text_content(): [c.text_content() for c in r.locator("td.diff").all()]
            for r in page.locator("#spec-diff tbody tr").all()}  # the spec diff
    assert list(diff) == [d["field"] for d in cmp["spec_diff"]]
    assert diff["name"] == [HOSTILE_NAME, "consumer"] and diff["metrics"] == [str(SERIES_POINTS), "3"]
    page.screenshot(path=str(shots / "compare.png"), full_page=True)
    page.goto(f"{server}/artifacts")
    ready(page)
    page.fill("input[name=kind]", "dataset")
    page.fill("input[name=where]", "name==ui-texts; size_bytes>0")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**where=**")
    ready(page)
    found = page.locator("#artifacts tbody tr")
    assert found.count() == 1 and found.first.locator("a").first.text_content() == ui_store.corpus_digest[:12]
    page.screenshot(path=str(shots / "artifacts.png"))
    page.goto(f"{server}/artifacts/{ui_store.dataset_digest}")
    ready(page)
    link = page.get_by_role("link", name="train.jsonl")
    link.wait_for()
    assert page.locator("#metadata").count() == 1
    page.screenshot(path=str(shots / "artifact.png"), full_page=True)
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
        run_id = pg.locator("#runs tbody tr").first.get_attribute("data-run")
        follow = context.new_page()  # the run page while it runs: its log is followed as it grows
        follow.goto(f"{base}/runs/{run_id}")
        ready(follow)
        assert follow.locator("h1 span").text_content() in ("queued", "running")
        assert follow.locator("#log").evaluate("el => el.previousElementSibling.querySelector('input').checked")
        assert "succeeded" not in follow.locator("#log").text_content()
        playwright_api.expect(status).to_have_text("succeeded", timeout=60000)
        playwright_api.expect(follow.locator("#log")).to_contain_text(f"run {run_id} succeeded", timeout=30000)
        assert follow.locator("#log").text_content().count(f"run {run_id} (noop) attempt 1") == 1  # appended once
        assert job.wait(timeout=60) == 0
    finally:
        context.close()
        if job is not None and job.poll() is None:
            job.kill()
        stop(proc)


def test_runs_page_columns_sort_by_a_metric_and_keyset_pages(server, page) -> None:
    page.goto(f"{server}/runs?limit=4")
    ready(page)
    key = "noop/metrics_logged"
    assert page.locator(f"th[data-col='metric:{key}']").count() == 0
    page.locator(".columns label").filter(has_text=key).locator("input").check()  # pick a column
    header = page.locator(f"th[data-col='metric:{key}']")
    header.click()  # sort by it
    page.wait_for_url("**sort=metric**")
    ready(page)
    expect = httpx.get(f"{server}/api/runs", params={"limit": 8, "sort": f"metric:{key}"}).json()["rows"]
    shown = [r.get_attribute("data-run") for r in page.locator("#runs tbody tr").all()]
    assert shown == [r["id"] for r in expect[:4]] and "▼" in header.text_content()
    values = [float(c.text_content()) for c in page.locator(f"#runs tbody td[data-col='metric:{key}']").all()]
    assert values == sorted(values, reverse=True)
    page.click("#next-page")
    page.wait_for_url("**cursor=**")
    ready(page)
    shown = [r.get_attribute("data-run") for r in page.locator("#runs tbody tr").all()]
    assert shown == [r["id"] for r in expect[4:8]]
    assert not page.problems, page.problems


def test_runs_page_filters_by_kind_status_tag_and_sweep(server, page, ui_store) -> None:
    page.goto(f"{server}/runs")
    ready(page)
    page.select_option("select[name=status]", "failed")
    page.fill("input[name=kind]", "noop")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**status=failed**")
    ready(page)
    failed = [r.get_attribute("data-run") for r in page.locator("#runs tbody tr").all()]
    assert failed == [r for r in ui_store.flaky_runs if httpx.get(f"{server}/api/runs/{r}").json()["run"]["status"]
                      == "failed"] and len(failed) == 1
    for params, want in (("tag=demo", {ui_store.hostile_run}), (f"sweep={ui_store.flaky_sweep_id}",
                                                                  set(ui_store.flaky_runs)),
                         ("kind=search", {ui_store.search_run, ui_store.search_hit})):
        page.goto(f"{server}/runs?{params}")
        ready(page)
        assert {r.get_attribute("data-run") for r in page.locator("#runs tbody tr").all()} == want, params
    assert not page.problems, page.problems


def test_run_page_links_the_resolved_input_and_shows_code_environment_events(server, page, ui_store) -> None:
    page.goto(f"{server}/runs/{ui_store.consumer_run}")
    ready(page)
    spec_link = page.locator(f"pre.spec a[href='/artifacts/{ui_store.result_digest}']")  # the digest it read
    assert spec_link.count() == 1 and spec_link.text_content() == f"sha256:{ui_store.result_digest}"
    d = httpx.get(f"{server}/api/runs/{ui_store.consumer_run}").json()
    code = page.locator("h2:text('Code version') + table").text_content()
    assert f"modules fingerprinted{d['code_modules']}" in code and d["code_modules"] > 0
    assert "python" in page.locator("h2:text('Environment') + table").text_content()
    events = [[c.text_content() for c in r.locator("td").all()] for r in page.locator("#events tbody tr").all()]
    assert [(e[2], e[3]) for e in events] == [(x["to_status"], str(x["attempt"])) for x in d["events"]]
    spec_link.click()
    page.wait_for_url(f"**/artifacts/{ui_store.result_digest}")
    ready(page)
    assert ui_store.hostile_run[:12] in page.locator("table.kv").text_content()  # its producer
    assert not page.problems, page.problems


def test_search_page_heat_map_trajectory_and_uniform(server, page, ui_store, shots) -> None:
    page.goto(f"{server}/runs/{ui_store.search_run}")
    ready(page)
    page.get_by_role("link", name="search views").click()
    page.wait_for_url(f"**/searches/{ui_store.search_run}")
    ready(page)
    d = httpx.get(f"{server}/api/searches/{ui_store.search_run}").json()
    heat = d["heat_map"]
    cells = page.locator("#heat rect.cell")
    assert cells.count() == len(heat["blocks"]) * len(heat["kinds"]) >= 14  # one cell per layer
    drawn = {(c.get_attribute("data-block"), c.get_attribute("data-kind")): c.get_attribute("data-bits")
             for c in cells.all()}
    assert drawn == {(str(b), k): str(heat["bits"][i][j]) for i, b in enumerate(heat["blocks"])
                     for j, k in enumerate(heat["kinds"])}
    for key in ("evo/kl", "evo/evaluations"):  # one point per generation logged
        chart = page.locator(f"#trajectory .chart-card[data-metric='{key}']")
        assert chart.locator("polyline.series").get_attribute("data-points") == str(GENERATIONS)
        assert chart.locator("circle.pt").count() == GENERATIONS
    methods = [r.locator("td").first.text_content() for r in page.locator("#vs-uniform tbody tr").all()]
    assert methods == [r["method"] for r in d["table"]] and {"evo", "uniform"} <= set(methods)
    page.screenshot(path=str(shots / "search.png"), full_page=True)
    page.goto(f"{server}/searches/{ui_store.search_hit}")  # a cache hit: the original's trajectory
    ready(page)
    assert ui_store.search_run[:12] in page.locator("#series-of").text_content()
    chart = page.locator("#trajectory .chart-card[data-metric='evo/kl'] polyline.series")
    assert chart.get_attribute("data-points") == str(GENERATIONS)
    assert page.locator("#heat rect.cell").count() == len(heat["blocks"]) * len(heat["kinds"])
    page.goto(f"{server}/runs/{ui_store.search_hit}")  # and its run page charts the original's series
    ready(page)
    assert ui_store.search_run[:12] in page.locator("#series-of").text_content()
    chart = page.locator("#charts .chart-card[data-metric='evo/kl'] polyline.series")
    chart.wait_for()
    assert chart.get_attribute("data-points") == str(GENERATIONS)
    assert not page.problems, page.problems


def test_a_read_only_server_shows_no_write_buttons_and_refuses_writes(server, page, ui_store) -> None:
    page.goto(f"{server}/runs/{ui_store.hostile_run}")
    ready(page)
    assert page.locator("button").filter(has_text="reproduce").count() == 0
    assert page.locator("button").filter(has_text="add tag").count() == 0
    page.goto(f"{server}/sweeps/{ui_store.flaky_sweep_id}")
    ready(page)
    assert page.locator("button").filter(has_text="resume").count() == 0
    assert not page.problems, page.problems
    answer = page.evaluate("""async (url) => { const r = await fetch(url, {method: "POST",
        headers: {"x-bitsmith-write-token": "guess", "content-type": "application/json"}, body: "{}"});
        return [r.status, (await r.json()).error]; }""", f"/api/sweeps/{ui_store.flaky_sweep_id}/resume")
    assert answer[0] == 403 and "read-only" in answer[1]


WRITE_TOKEN = "ui-write-token-3"


@pytest.fixture(scope="module")
def writable(ui_store, tmp_path_factory):
    """A copy of the UI store (the shared one stays as the other tests expect) served with a write token."""
    home = tmp_path_factory.mktemp("writable") / "home"
    shutil.copytree(ui_store.home, home)
    env = {**ui_store.env, "BITSMITH_HOME": str(home), "BITSMITH_DB_URL": f"sqlite:///{home / 'bitsmith.db'}",
           "BITSMITH_ARTIFACT_ROOT": str(home / "artifacts"), "BITSMITH_UI_WRITE_TOKEN": WRITE_TOKEN}
    from bitsmith.platform import store

    db = store.open_database(env["BITSMITH_DB_URL"])
    proc, base = start_server(env)
    yield base, db
    stop(proc)


def _queued(db, name: str) -> str:
    """A run waiting in the queue (no dispatcher serves this store, so it stays queued until cancelled)."""
    from bitsmith.platform import store

    return store.create_run(db, kind="noop", name=name, spec={"kind": "noop", "name": name}, spec_hash=name,
                            cache_key=name, seed=0, code_version={}).id


@pytest.fixture
def write_page(browser):
    """A page that answers the write-token prompt with the token and the tag prompt with "clicked-tag"."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    pg.problems = []

    def on_dialog(d) -> None:
        if "write token" in d.message:
            d.accept(WRITE_TOKEN)
        elif "tag to add" in d.message:
            d.accept("clicked-tag")
        else:
            pg.problems.append(f"dialog: {d.message}")
            d.dismiss()

    pg.on("pageerror", lambda e: pg.problems.append(f"pageerror: {e}"))
    pg.on("console", lambda m: pg.problems.append(f"console: {m.text}") if m.type == "error" else None)
    pg.on("dialog", on_dialog)
    yield pg
    context.close()


def _until(check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out waiting for the store to change"
        time.sleep(0.5)


def test_write_actions_clicked_in_the_browser_change_the_store(writable, write_page, ui_store, shots) -> None:
    from bitsmith.platform import store
    from bitsmith.platform.ui import views

    base, db = writable
    pg, expect = write_page, playwright_api.expect
    queued = _queued(db, "to-cancel")
    pg.goto(f"{base}/runs/{queued}")
    ready(pg)
    assert pg.locator("button").filter(has_text="reproduce").count() == 0  # only a succeeded run reproduces
    pg.get_by_role("button", name="cancel").click()
    expect(pg.locator("#write-result")).to_contain_text("done:")
    after = store.get_run(db, queued)
    assert after.status == "cancelled" and after.cancel_requested
    pg.goto(f"{base}/runs/{ui_store.hostile_run}")
    ready(pg)
    assert pg.locator("button").filter(has_text="cancel").count() == 0  # a finished run has nothing to cancel
    out = pg.locator("#write-result")
    pg.get_by_role("button", name="add tag").click()
    expect(out).to_contain_text("clicked-tag")
    assert list(store.get_run(db, ui_store.hostile_run).tags) == ["demo", "clicked-tag"]
    before_children = len(store.get_sweep(db, ui_store.flaky_sweep_id).run_ids)
    pg.get_by_role("button", name="reproduce").click()
    expect(out).to_contain_text("done:")
    pg.goto(f"{base}/sweeps/{ui_store.flaky_sweep_id}")
    ready(pg)
    pg.get_by_role("button", name="resume").click()
    expect(pg.locator("#write-result")).to_contain_text("done:")
    # both ran as background `bitsmith` processes of the server: a reproduction of the hostile run with a verdict,
    # and the failed sweep child run again
    verdicts = _until(lambda: views.run_page(db, ui_store.hostile_run)["reproductions"])
    assert verdicts[0]["original"] == ui_store.hostile_run and verdicts[0]["matches"]
    _until(lambda: len(store.get_sweep(db, ui_store.flaky_sweep_id).run_ids) == before_children + 1 and all(
        store.get_run(db, r).status in ("succeeded", "failed") for r in store.get_sweep(db, ui_store.flaky_sweep_id)
        .run_ids))
    pg.goto(f"{base}/runs/{ui_store.hostile_run}")
    ready(pg)
    expect(pg.locator("section").filter(has_text="Reproductions").locator("tbody tr").first).to_contain_text(
        "matches")
    pg.screenshot(path=str(shots / "run-writable.png"), full_page=True)
    assert not pg.problems, pg.problems


def test_a_cross_site_page_cannot_write_even_with_the_token(writable, write_page) -> None:
    from bitsmith.platform import store

    base, db = writable
    pg = write_page
    target = _queued(db, "cross-site-target")
    form = (f'<form id=f method=post action="{base}/api/runs/{target}/cancel"><input name=x value=1></form>'
            f'<script>document.getElementById("f").submit()</script>')
    pg.route("http://evil.example/**", lambda route: route.fulfill(
        status=200, content_type="text/html", body=form if route.request.url.endswith("/form") else "<p>evil</p>"))
    with pg.expect_response(f"{base}/api/runs/{target}/cancel") as answer:
        pg.goto("http://evil.example/form")  # a cross-site form post: the browser sends Origin: http://evil.example
    assert answer.value.status == 403 and "cross-site" in answer.value.json()["error"]
    pg.goto("http://evil.example/")
    sent = pg.evaluate("""async ([url, token]) => { try { const r = await fetch(url, {method: "POST",
        headers: {"x-bitsmith-write-token": token}}); return r.status; } catch (e) { return String(e); } }""",
                       [f"{base}/api/runs/{target}/cancel", WRITE_TOKEN])
    assert "TypeError" in str(sent)  # a cross-origin fetch with the header fails its CORS preflight, never sent
    assert store.get_run(db, target).status == "queued"
