"""The HTML documents of the pages: a small escaped shell that the page script (static/app.js) fills from the API,
or, for `bitsmith report`, one self-contained file with the styles, the script and the API answers inlined."""
from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from starlette.responses import HTMLResponse

STATIC = Path(__file__).parent / "static"

# (route, page name); the script draws the page named in <body data-page>.
PAGES: list[tuple[str, str]] = [
    ("/", "runs"), ("/runs", "runs"), ("/runs/{ref}", "run"), ("/compare", "compare"),
    ("/artifacts", "artifacts"), ("/artifacts/{ref}", "artifact"), ("/lineage", "lineage"),
    ("/sweeps", "sweeps"), ("/sweeps/{ref}", "sweep"), ("/searches/{ref}", "search"),
]
TITLES = {"runs": "Runs", "run": "Run", "compare": "Compare", "artifacts": "Artifacts", "artifact": "Artifact",
          "lineage": "Lineage", "sweeps": "Sweeps", "sweep": "Sweep", "search": "Search", "report": "Report"}
NAV = [("/runs", "Runs"), ("/artifacts", "Artifacts"), ("/sweeps", "Sweeps"), ("/lineage", "Lineage")]


def _nav() -> str:
    links = "".join(f'<a href="{href}">{label}</a>' for href, label in NAV)
    return f'<header><a class=brand href="/">bitsmith</a><nav>{links}</nav><span id=live></span></header>'


def page_html(name: str, params: dict[str, str], *, writable: bool) -> HTMLResponse:
    """The shell of page `name` served by `bitsmith ui` (assets from /static, no inline script: the CSP forbids it)."""
    ref = params.get("ref", "")
    title = f"{TITLES[name]} {ref}".strip()
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>bitsmith: {escape(title)}</title><link rel=stylesheet href=/static/app.css>"
        "<link rel=icon href=/static/icon.svg type=image/svg+xml></head>"
        f'<body data-page="{escape(name)}" data-ref="{escape(ref)}" data-writable="{"1" if writable else "0"}">'
        f"{_nav()}<main id=app><p class=muted>loading…</p></main>"
        "<script src=/static/app.js></script></body></html>")


def _inline_json(data: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' survive literally."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def report_html(title: str, page: str, ref: str, responses: dict[str, Any]) -> str:
    """One self-contained document: page `page` of `ref` drawn from `responses` (API path -> its JSON answer)."""
    css = (STATIC / "app.css").read_text(encoding="utf-8")
    script = (STATIC / "app.js").read_text(encoding="utf-8").replace("</", "<\\/")
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>bitsmith report: {escape(title)}</title><style>{css}</style></head>"
            f'<body data-page="{escape(page)}" data-ref="{escape(ref)}" data-writable="0" data-report="1">'
            f'<header><span class=brand>bitsmith report</span><span class=muted>{escape(title)}</span></header>'
            "<main id=app><p class=muted>This report needs JavaScript to draw its tables and charts.</p></main>"
            f'<script type="application/json" id="bitsmith-data">{_inline_json(responses)}</script>'
            f"<script>{script}</script></body></html>")
