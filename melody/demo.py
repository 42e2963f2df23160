"""The demo hub: Go melody's chat example. ``melody demo`` serves it with its page.

Open http://127.0.0.1:5000/ in two browser tabs and type: every message is broadcast to every
tab; the page uses the browser client (``/melody-client.js``, ``melody.browser``), so it
reconnects by itself. ``/healthz`` answers ``ok`` for load balancers.
"""

from __future__ import annotations

from melody.browser import serve_client
from melody.config import Config
from melody.handshake import Request
from melody.hub import Melody
from melody.session import Session

__all__ = ["hub", "PAGE"]

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>melody chat</title>
<style>body{font:16px sans-serif;margin:2em}#log{border:1px solid #ccc;height:20em;overflow:auto;
padding:.5em;white-space:pre-wrap}#msg{width:30em}</style></head>
<body><h1>melody chat</h1><div id="log"></div>
<form id="form"><input id="msg" autocomplete="off" placeholder="say something">
<button>send</button></form>
<p id="status">connecting...</p>
<script type="module">
import { MelodyClient } from "/melody-client.js";
const log = document.getElementById("log");
const status = document.getElementById("status");
const scheme = location.protocol === "https:" ? "wss://" : "ws://";
// Reconnects with backoff; what is typed while disconnected is sent on reconnect.
const client = new MelodyClient(scheme + location.host + "/ws");
client.onEvent("connected", () => { status.textContent = "connected"; });
client.onEvent("disconnected", (e) => { status.textContent = "reconnecting (" + e.code + ")"; });
client.on("text", (text) => { const line = document.createElement("div"); line.className = "line";
  line.textContent = text; log.appendChild(line); log.scrollTop = log.scrollHeight; });
document.getElementById("form").onsubmit = (e) => { e.preventDefault();
  const input = document.getElementById("msg");
  if (input.value) { client.sendText(input.value); input.value = ""; } };
</script></body></html>
"""

hub = Melody(Config(compression=True))


@hub.handle_http
def page(request: Request) -> tuple[int, list[tuple[str, str]], bytes] | None:
    if request.path == "/":
        return 200, [("Content-Type", "text/html; charset=utf-8")], PAGE
    if request.path == "/healthz":
        return 200, [("Content-Type", "text/plain")], b"ok\n"
    return serve_client(request)  # the browser client the page imports


@hub.handle_message
def chat(session: Session, msg: str) -> None:
    hub.broadcast(msg)
