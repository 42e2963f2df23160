"""reload: a hub whose origins, JWT keys, limits and log level change without a restart.

Serve it with its settings file, from the repository root::

    melody serve examples.reload.app:hub --port 5000 --config examples/reload/settings.toml

then edit ``settings.toml`` and ``kill -HUP <pid>``: the hub logs one line saying what changed
(or, for a file it refuses, why, and changes nothing); no connection is dropped. The HTTP API
(key ``MELODY_API_KEY``, a development default otherwise) shows the sessions and topics and
feeds ``melody top http://127.0.0.1:5000/api --api-key KEY``.

The application registers the middleware; the file tunes it. What the file leaves out keeps
the values below.
"""

from __future__ import annotations

import os

import melody
from melody.codecs import JSON
from melody.middleware import AccessLog, ConnectionLimit, JWTAuth

hub = melody.Melody(melody.Config(allowed_origins=["same-origin"]), codec=JSON)
hub.use(AccessLog())
hub.use(ConnectionLimit(max_total=10_000, max_per_ip=50))
# Replaced by the keys of settings.toml's [jwt] table.
hub.use(JWTAuth(os.environ.get("JWT_SECRET", "development-secret-change-me-0123456789"),
                algorithms=["HS256"]))
hub.enable_http_api(os.environ.get("MELODY_API_KEY", "development-api-key-change-me"))


@hub.route("join")
def join(session: melody.Session, room: str) -> str:
    hub.subscribe(session, room)
    return room


@hub.route("say")
def say(session: melody.Session, data: dict[str, str]) -> None:
    hub.publish_json(data["room"], {"from": session.user, "text": data["text"]})
