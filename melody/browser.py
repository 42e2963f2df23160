"""The browser client, served by a hub: ``<script type="module">`` pages import it from the hub.

``clients/js`` (the npm package ``melody-ws-client``) is built into one ES module,
``melody/static/melody-client.js``, shipped in the wheel. A hub that serves its own pages
(``@hub.handle_http``) serves the client too::

    @hub.handle_http
    def pages(request):
        return melody.browser.serve_client(request) or ...

and a page imports it with ``import { MelodyClient } from "/melody-client.js"``. The examples
and ``melody demo`` do this.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from melody.handshake import Request

__all__ = ["CLIENT_PATH", "client_js", "serve_client"]

#: The URL path :func:`serve_client` answers.
CLIENT_PATH = "/melody-client.js"

_FILE = Path(__file__).parent / "static" / "melody-client.js"
_HEADERS = [("Content-Type", "text/javascript; charset=utf-8"), ("Cache-Control", "no-cache")]


@cache
def client_js() -> bytes:
    """The built client module (read once). Raises FileNotFoundError when the package was
    installed without it (a broken build: ``clients/js``'s ``npm run build`` writes it)."""
    return _FILE.read_bytes()


def serve_client(request: Request) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """The ``handle_http`` answer for :data:`CLIENT_PATH` (200 with the module); None for
    any other path, so that it chains with ``or``."""
    if request.path == CLIENT_PATH:
        return 200, _HEADERS, client_js()
    return None
