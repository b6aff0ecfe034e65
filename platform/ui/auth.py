"""Who may call the server: the access token (bearer header or login cookie), the write token (a header only,
so a cross-site form or a cookie alone can never write), allowed Host names, and security headers."""
from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from html import escape
from typing import Awaitable, Callable
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ..errors import UsageError

COOKIE = "bitsmith_ui_token"
WRITE_HEADER = "x-bitsmith-write-token"
PUBLIC_ASSETS = frozenset({"/static/app.css", "/static/icon.svg"})  # what the login page itself needs
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


@dataclass(frozen=True)
class Access:
    token: str | None = None          # BITSMITH_UI_TOKEN: every request needs it (bearer or cookie)
    write_token: str | None = None    # BITSMITH_UI_WRITE_TOKEN: writes exist only with it, sent in WRITE_HEADER
    allowed_hosts: frozenset[str] | None = None  # Host header names accepted (None: any)

    @property
    def writable(self) -> bool:
        return bool(self.write_token)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without an access token."""
    if not is_loopback(host) and not token:
        raise UsageError(f"ui --host {host}: binding beyond loopback needs an access token; expected "
                         "BITSMITH_UI_TOKEN set (clients then send it as a bearer header or log in once)",
                         hint="BITSMITH_UI_TOKEN=$(openssl rand -hex 16) bitsmith ui --host 0.0.0.0")


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def _host_name(request: Request) -> str:
    host = request.headers.get("host", "")
    if host.startswith("["):
        return host[:host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def login_page(message: str = "", status: int = 401) -> HTMLResponse:
    note = f"<p class=err>{escape(message)}</p>" if message else ""
    return HTMLResponse(
        "<!doctype html><html><head><meta charset=utf-8><title>bitsmith: log in</title>"
        "<link rel=stylesheet href=/static/app.css></head><body><main class=login><h1>bitsmith</h1>"
        f"{note}<form method=post action=/login><label>access token <input type=password name=token "
        "autocomplete=current-password autofocus></label> <button type=submit>log in</button></form></main>"
        "</body></html>", status_code=status)


def _error(status: int, message: str, api: bool) -> Response:
    if api:
        return JSONResponse({"error": message}, status_code=status)
    return login_page(message, status) if status == 401 else HTMLResponse(escape(message), status_code=status)


def middleware(access: Access) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """The HTTP middleware enforcing `access` and adding security headers to every response."""
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await _decide(access, request, call_next)
        response.headers.setdefault("content-security-policy", CSP)
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["referrer-policy"] = "no-referrer"
        response.headers["x-frame-options"] = "DENY"
        return response

    return guard


async def _decide(access: Access, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    path = request.url.path
    api = path.startswith("/api/")
    if access.allowed_hosts is not None and _host_name(request) not in access.allowed_hosts:
        return _error(400, "unexpected Host header; expected this server's own address", api)
    if access.token:
        if path == "/login" and request.method == "POST":
            return await _login(access, request)
        if path == "/login" or path in PUBLIC_ASSETS:
            return login_page("", 200) if path == "/login" else await call_next(request)
        if not (_same(_bearer(request), access.token) or _same(request.cookies.get(COOKIE), access.token)):
            return _error(401, "missing or wrong access token; expected 'Authorization: Bearer TOKEN' or a login",
                          api)
    if request.method not in SAFE_METHODS:
        if not _same_origin(request):
            return _error(403, "cross-site write refused; expected a request from this server's own pages", api)
        if not access.writable:
            return _error(403, "this server is read-only; expected it started with BITSMITH_UI_WRITE_TOKEN", api)
        if not _same(request.headers.get(WRITE_HEADER), access.write_token or ""):
            return _error(403, f"missing or wrong write token; expected it in the {WRITE_HEADER} header", api)
    return await call_next(request)


def _same_origin(request: Request) -> bool:
    """CSRF guard besides the write-token header: a browser's Origin (when sent) must be this server's address."""
    origin = request.headers.get("origin")
    if origin is None:  # not a browser's cross-site request (non-browser clients still need the write token)
        return True
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


async def _login(access: Access, request: Request) -> Response:
    body = (await request.body())[:4096].decode("utf-8", errors="replace")
    given = (parse_qs(body).get("token") or [""])[0]
    if not _same(given, access.token or ""):
        return login_page("wrong access token", 401)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, given, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


