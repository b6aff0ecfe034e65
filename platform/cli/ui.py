"""`bitsmith ui [--host 127.0.0.1] [--port 8765]`: serve the web interface and JSON API over the store."""
from __future__ import annotations

import os

import click

from .common import settings_from


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind; anything but loopback needs BITSMITH_UI_TOKEN")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="TCP port (0: any free)")
@click.pass_context
def ui(ctx: click.Context, host: str, port: int) -> None:
    """Serve the pages and the JSON API (OpenAPI at /api/openapi.json); read-only unless a write token is set.

    \b
    BITSMITH_UI_TOKEN        every request needs it (a bearer header, or a login once in the browser);
                             required to bind beyond loopback
    BITSMITH_UI_WRITE_TOKEN  enables cancel / tag / reproduce / resume; each write sends it in the
                             X-Bitsmith-Write-Token header
    """
    from ..errors import UsageError
    from ..ui.auth import Access, check_bind, is_loopback

    token = os.environ.get("BITSMITH_UI_TOKEN") or None
    write_token = os.environ.get("BITSMITH_UI_WRITE_TOKEN") or None
    check_bind(host, token)
    if write_token and token and write_token == token:
        raise UsageError("BITSMITH_UI_WRITE_TOKEN equals BITSMITH_UI_TOKEN; expected a different, secret write token")
    import uvicorn

    from ..ui.app import create_app

    settings = settings_from(ctx)
    # On loopback, only loopback Host names are answered (a DNS-rebinding page cannot read the API).
    allowed = None if not is_loopback(host) else frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
    app = create_app(settings, Access(token=token, write_token=write_token, allowed_hosts=allowed))
    mode = "read-write" if write_token else "read-only"
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"bitsmith ui ({mode}) on http://{shown}:{port}/ over {settings.db_url}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, proxy_headers=False)
