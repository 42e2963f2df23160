"""The Grafana dashboard (docs/grafana/melody-dashboard.json) and the example alert rules
(docs/prometheus/melody-alerts.yml) name only metrics that a live hub exports: a hub with a
Redis backplane and metrics on is served, exercised (routes, a failure, a broadcast, a refused
upgrade, a disconnect), and its /metrics scrape must contain every ``melody_*`` and
``process_*`` series the two files query. Renaming a metric without updating them fails here.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_support import wait_until
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import melody
from melody import RedisBackplane

DOCS = Path(__file__).resolve().parents[2] / "docs"
DASHBOARD = DOCS / "grafana" / "melody-dashboard.json"
RULES = DOCS / "prometheus" / "melody-alerts.yml"
# Series names: melody's own and the process collector's (``up`` is Prometheus's own).
NAME = re.compile(r"\b((?:melody|process)_[a-z0-9_]+)")


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    return exprs


def rule_exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_the_files_parse_and_query_something() -> None:
    dashboard = dashboard_exprs()
    rules = rule_exprs()
    assert len(dashboard) >= 20 and len(rules) >= 8
    for expr in dashboard + rules:
        assert NAME.search(expr) or "up{" in expr, expr
    names = {m for e in dashboard for m in NAME.findall(e)}
    # What the issue asks the dashboard to show.
    for wanted in ("melody_sessions", "melody_disconnects_total", "melody_frames_dropped_total",
                   "melody_messages_received_total", "melody_sent_bytes_total",
                   "melody_broadcast_fanout_seconds_bucket", "melody_handler_seconds_bucket",
                   "melody_handler_errors_total", "melody_backplane_connected"):
        assert wanted in names, wanted


def scrape(port: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {sample.name for family in text_string_to_metric_families(text)
            for sample in family.samples}


@pytest.mark.asyncio
async def test_every_queried_metric_is_exported(redis_url: str, prefix: str) -> None:
    backplane = RedisBackplane(redis_url, channel_prefix=prefix, timeout=2.0)
    hub = melody.Melody(melody.Config(allowed_origins=["https://ok.example"]),
                        codec=melody.codecs.JSON, backplane=backplane)
    hub.handle_error(lambda session, error: None)

    @hub.route("chat.send")
    def send(session: melody.Session, data: Any) -> Any:
        hub.broadcast_json({"type": "chat", "data": data})
        return True

    @hub.route("chat.fail")
    def fail(session: melody.Session, data: Any) -> Any:
        raise ValueError("broken")

    server = await melody.serve(hub, "127.0.0.1", 0, metrics=True)
    port = server.sockets[0].getsockname()[1]
    try:
        await wait_until(lambda: backplane.connected, "backplane connected")
        async with asyncio.timeout(10):
            async with connect(f"ws://127.0.0.1:{port}", proxy=None) as ws:
                await ws.send(json.dumps({"type": "chat.send", "id": 1, "data": "hi"}))
                await ws.send(json.dumps({"type": "chat.fail", "id": 2}))
                await ws.send(json.dumps({"type": "nope", "id": 3}))
                seen = [json.loads(await ws.recv()) for _ in range(4)]
                assert sum(1 for m in seen if m.get("id") in (1, 2, 3)) == 3, seen
            with pytest.raises(InvalidStatus):
                await connect(f"ws://127.0.0.1:{port}", proxy=None,
                              origin="https://evil.example")  # type: ignore[arg-type]
        await wait_until(lambda: len(hub) == 0, "the session ended")
        exported = await asyncio.to_thread(scrape, port)
    finally:
        await hub.shutdown(timeout=2.0)

    queried = {m for e in dashboard_exprs() + rule_exprs() for m in NAME.findall(e)}
    missing = sorted(queried - exported)
    assert not missing, f"queried but not exported: {missing}"
