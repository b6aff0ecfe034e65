"""Who may call the server: the bind rule, the access token (bearer or login cookie), the write token + CSRF."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from bitsmith.platform.ui.app import create_app
from bitsmith.platform.ui.auth import COOKIE, WRITE_HEADER, Access

from .conftest import ROOT

TOKEN, WRITE = "access-token-1", "write-token-2"
LOOPBACK = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


def _client(ui_store, ui_db, access: Access) -> TestClient:
    return TestClient(create_app(ui_store.settings(), access, db=ui_db), base_url="http://127.0.0.1")


def _ui(ui_store, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bitsmith.platform.cli.main", "ui", *args], cwd=ROOT,
                          env={**ui_store.env, **(env or {})}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::"])
def test_binding_beyond_loopback_without_a_token_refuses_to_start(ui_store, host) -> None:
    res = _ui(ui_store, "--host", host, "--port", "1")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"ui --host {host}" in res.stderr and "BITSMITH_UI_TOKEN" in res.stderr


def test_a_write_token_equal_to_the_access_token_is_refused(ui_store) -> None:
    res = _ui(ui_store, "--port", "1", env={"BITSMITH_UI_TOKEN": "same", "BITSMITH_UI_WRITE_TOKEN": "same"})
    assert res.returncode == 2 and "BITSMITH_UI_WRITE_TOKEN" in res.stderr


def test_the_access_token_by_bearer_or_login_cookie(ui_store, ui_db) -> None:
    client = _client(ui_store, ui_db, Access(token=TOKEN))
    assert client.get("/api/runs").status_code == 401
    assert client.get("/api/openapi.json").status_code == 401
    assert client.get("/api/runs", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/runs", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    page = client.get("/runs")
    assert page.status_code == 401 and "<form method=post action=/login>" in page.text
    assert client.get("/static/app.css").status_code == 200  # what the login page needs
    assert client.get("/static/app.js").status_code == 401
    wrong = client.post("/login", data={"token": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and COOKIE not in wrong.headers.get("set-cookie", "")
    ok = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert ok.status_code == 303 and "httponly" in ok.headers["set-cookie"].lower()
    assert "samesite=strict" in ok.headers["set-cookie"].lower()
    assert client.get("/api/runs").status_code == 200  # the cookie now rides along
    client.cookies.clear()
    assert client.get("/api/runs").status_code == 401


def test_a_read_only_server_has_no_write_routes_and_refuses_writes(ui_store, ui_db) -> None:
    client = _client(ui_store, ui_db, Access())
    res = client.post(f"/api/runs/{ui_store.consumer_run}/tags", json={"add": ["x"]},
                      headers={WRITE_HEADER: WRITE})
    assert res.status_code == 403 and "read-only" in res.json()["error"]
    assert not any(op == "post" for ops in client.get("/api/openapi.json").json()["paths"].values() for op in ops)


def test_writes_need_the_write_token_header_and_a_same_origin(ui_store, ui_db) -> None:
    from bitsmith.platform import store

    client = _client(ui_store, ui_db, Access(token=TOKEN, write_token=WRITE))
    client.post("/login", data={"token": TOKEN})  # logged in: the cookie alone must not be enough to write
    url = f"/api/runs/{ui_store.consumer_run}/tags"
    assert client.post(url, json={"add": ["ui-test"]}).status_code == 403
    assert client.post(url, json={"add": ["ui-test"]}, headers={WRITE_HEADER: "wrong"}).status_code == 403
    cross = client.post(url, json={"add": ["ui-test"]}, headers={WRITE_HEADER: WRITE, "origin": "http://evil.example"})
    assert cross.status_code == 403 and "cross-site" in cross.json()["error"]
    assert "ui-test" not in store.get_run(ui_db, ui_store.consumer_run).tags
    res = client.post(url, json={"add": ["ui-test"]}, headers={WRITE_HEADER: WRITE, "origin": "http://127.0.0.1"})
    assert res.status_code == 200 and "ui-test" in res.json()["tags"]
    assert "ui-test" in store.get_run(ui_db, ui_store.consumer_run).tags
    back = client.post(url, json={"remove": ["ui-test"]}, headers={WRITE_HEADER: WRITE})
    assert back.status_code == 200 and "ui-test" not in store.get_run(ui_db, ui_store.consumer_run).tags
    bad = client.post(url, json={"add": ["\x1b[31m"]}, headers={WRITE_HEADER: WRITE})
    assert bad.status_code == 400 and "printable" in bad.json()["error"]
    done = client.post(f"/api/runs/{ui_store.consumer_run}/cancel", headers={WRITE_HEADER: WRITE})
    assert done.status_code in (200, 400)  # a finished run: cancelling is refused or a no-op, never a 500


def test_loopback_server_answers_only_loopback_host_names(ui_store, ui_db) -> None:
    client = _client(ui_store, ui_db, Access(allowed_hosts=LOOPBACK))
    assert client.get("/api/info").status_code == 200
    assert client.get("/api/info", headers={"host": "rebind.example:8765"}).status_code == 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_server_beyond_loopback_with_a_token(ui_store) -> None:
    port = _free_port()
    env = {**ui_store.env, "BITSMITH_UI_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "bitsmith.platform.cli.main", "ui", "--host", "0.0.0.0",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                res = httpx.get(f"{base}/api/info", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
                time.sleep(0.2)
        assert res.status_code == 401
        ok = httpx.get(f"{base}/api/runs", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert ok.status_code == 200 and len(ok.json()["rows"]) >= 2
        refused = httpx.post(f"{base}/api/runs/{ui_store.consumer_run}/cancel",
                             headers={"authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert refused.status_code == 403  # no write token configured: read-only
    finally:
        proc.terminate()
        proc.wait(timeout=10)
