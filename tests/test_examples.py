"""The examples in ``examples/``, run as a user runs them and driven as a user drives them.

Each example is started as a subprocess (``python examples/NAME/main.py --port 0``, the command
``examples/README.md`` gives) and talked to over 127.0.0.1 with the ``websockets`` client; the
chat example is also driven end to end in headless Chromium through Playwright: two pages
exchange messages by typing into the page's own form.

The browser test needs Debian's ``chromium`` and the ``playwright`` package (never ``playwright
install``: the system Chromium is used). In CI (``CI`` set) their absence is a failure; elsewhere
the test is skipped and says why.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

import melody

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="the examples are stopped with SIGINT, as by Ctrl-C (POSIX)")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 10.0  # seconds: the bound on every single wait below


def _env() -> dict[str, str]:
    # The examples import the melody these tests imported (this tree when it is built in place,
    # else the installed one), not whatever the child's sys.path would find first.
    home = str(Path(melody.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (home, os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")


class Running:
    """One example process; ``port`` is the one it printed (it was started with port 0)."""

    def __init__(self, args: list[str], pattern: str, *, stream: str = "stdout") -> None:
        # Files, not pipes, for what is not read line by line: a full pipe would block the child.
        self._stderr: IO[str] = tempfile.TemporaryFile("w+")
        self._stdout: IO[str] = tempfile.TemporaryFile("w+")
        piped = subprocess.PIPE
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=_env(), text=True, stdin=subprocess.DEVNULL,
            stdout=piped if stream == "stdout" else self._stdout,
            stderr=piped if stream == "stderr" else self._stderr)
        pipe = self.proc.stdout if stream == "stdout" else self.proc.stderr
        assert pipe is not None
        lines: queue.Queue[str | None] = queue.Queue()
        sink = self._stdout if stream == "stdout" else self._stderr

        def pump() -> None:  # keeps the pipe drained for the life of the process
            for line in pipe:
                sink.write(line)
                lines.put(line)
            lines.put(None)

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        deadline = time.monotonic() + 30  # generous: imports are slow on a loaded machine
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
                raise AssertionError(f"{args} did not print its address:\n{self.output()}")
            found = re.search(pattern, line)
            if found:
                self.port = int(found.group(1))
                return

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def output(self) -> str:
        text = ""
        for f in (self._stdout, self._stderr):
            f.flush()
            f.seek(0)
            text += f.read()
        return text

    def stop(self) -> tuple[int, str]:
        """Ctrl-C, as a user stops it: the exit code and everything it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
            raise AssertionError(f"did not stop on SIGINT:\n{self.output()}") from None
        self._pump.join(TIMEOUT)
        out = self.output()
        self._stdout.close()
        self._stderr.close()
        return code, out


def start_example(name: str, *extra: str) -> Running:
    script = EXAMPLES / name / "main.py"
    return Running([sys.executable, str(script), "--port", "0", *extra],
                   rf"{name}: open http://127\.0\.0\.1:(\d+)/")


@pytest.fixture
def example(request: pytest.FixtureRequest) -> Iterator[Running]:
    """The example named by the test's parameter (``@examples(name, *args)``), stopped after.

    Stopping checks what a user would see on Ctrl-C: exit code 0 and no traceback (a handler
    that raised, e.g. broadcasting on a closed hub, is logged with one).
    """
    name, *extra = request.param
    running = start_example(name, *extra)
    yield running
    code, out = running.stop()
    assert code == 0, out
    assert "Traceback" not in out and "raised" not in out, out


def examples(*args: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("example", [args], indirect=True, ids=[args[0]])


async def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> str:
    msg = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(msg, str)
    return msg


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


async def refused_status(url: str) -> int:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with connect(url, open_timeout=TIMEOUT):
            pass
    return refused.value.response.status_code


# -- chat ---------------------------------------------------------------------------------------


@examples("chat")
def test_chat_serves_its_page_and_only_its_socket_path(example: Running) -> None:
    status, kind, body = get(example.http + "/")
    assert (status, kind) == (200, "text/html; charset=utf-8")
    for element in ('id="message"', 'id="send"', 'id="chat-form"', 'id="log"', 'id="status"'):
        assert element.encode() in body
    assert b'import { MelodyClient } from "/melody-client.js"' in body
    status, kind, module = get(example.http + "/melody-client.js")
    assert (status, kind) == (200, "text/javascript; charset=utf-8")
    assert b"export {" in module and b"MelodyClient" in module
    assert get(example.http + "/nope")[0] == 404
    assert asyncio.run(refused_status(example.ws + "/elsewhere")) == 404


async def chat_request(ws: ClientConnection, msg_id: int, type: str, data: object) -> object:
    """Send a request of the chat page's protocol (docs/protocol.md) and return its reply."""
    await ws.send(json.dumps({"type": type, "id": msg_id, "data": data}))
    reply = json.loads(await recv(ws))
    assert reply["id"] == msg_id and reply["ok"], reply
    return reply["data"]


@examples("chat")
def test_chat_broadcasts_every_message_to_every_client(example: Running) -> None:
    async def talk() -> None:
        url = example.ws + "/ws"
        async with connect(url) as alice, connect(url) as bob, connect(url) as carol:
            for ws in (alice, bob, carol):
                reply = await chat_request(ws, 1, "subscribe", {"topic": "chat"})
                assert isinstance(reply, dict) and reply["subscribed"] is True
            await alice.send(json.dumps({"type": "publish", "id": 2, "data": {
                "topic": "chat", "data": {"text": "hello from alice"}}}))
            # The sender too (its page shows the relayed copy); its ack comes after, in order.
            for ws in (alice, bob, carol):
                assert json.loads(await recv(ws)) == {
                    "type": "publish", "topic": "chat", "offset": 1,
                    "data": {"text": "hello from alice"}}
            assert json.loads(await recv(alice)) == {"id": 2, "ok": True, "data": 3}
            await bob.send(json.dumps({"type": "publish", "id": 3, "data": {
                "topic": "chat", "data": {"text": "héllo 👋 from bob"}}}))
            for ws in (alice, bob, carol):
                pub = json.loads(await recv(ws))
                assert (pub["offset"], pub["data"]) == (2, {"text": "héllo 👋 from bob"})
            assert json.loads(await recv(bob)) == {"id": 3, "ok": True, "data": 3}
            # Only the chat topic.
            await bob.send(json.dumps({"type": "subscribe", "id": 4, "data": "other"}))
            assert json.loads(await recv(bob)) == {"id": 4, "ok": False, "error": "forbidden"}

    asyncio.run(talk())


def test_chat_says_goodbye_with_1001_on_ctrl_c() -> None:
    running = start_example("chat")

    async def talk() -> tuple[int, str]:
        async with connect(running.ws + "/ws") as ws:
            await chat_request(ws, 1, "subscribe", "chat")
            result = await asyncio.to_thread(running.stop)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
            return result

    code, out = asyncio.run(talk())
    assert code == 0, out
    assert "Traceback" not in out, out


# -- multichat ----------------------------------------------------------------------------------


async def chat_line(ws: ClientConnection) -> str:
    """The next chat line, skipping the hub's presence notices ("* ...")."""
    while True:
        msg = await recv(ws)
        if not msg.startswith("* "):
            return msg


@examples("multichat")
def test_multichat_pages_by_path(example: Running) -> None:
    status, kind, body = get(example.http + "/")
    assert (status, kind) == (200, "text/html; charset=utf-8") and b'id="join-form"' in body
    status, _, body = get(example.http + "/channel/go")
    assert status == 200 and b'id="chat-form"' in body
    assert get(example.http + "/channel/go/")[0] == 200
    assert get(example.http + "/channel/no%20spaces")[0] == 404
    assert get(example.http + "/elsewhere")[0] == 404


@examples("multichat")
def test_multichat_refuses_sockets_outside_a_room(example: Running) -> None:
    async def refused() -> list[int]:
        return [await refused_status(example.ws + path)
                for path in ("/ws", "/channel/go", "/channel//ws", "/channel/a%20b/ws")]

    assert asyncio.run(refused()) == [404, 404, 404, 404]


@examples("multichat")
def test_multichat_rooms_do_not_hear_each_other(example: Running) -> None:
    async def talk() -> None:
        go, py = example.ws + "/channel/go/ws", example.ws + "/channel/python/ws"
        async with connect(go) as a1:
            assert await recv(a1) == "* someone joined: 1 in #go"
            async with connect(go) as a2, connect(py) as b1:
                # Presence reaches the room only (and counts it): b1 is alone in #python.
                for ws in (a1, a2):
                    assert await recv(ws) == "* someone joined: 2 in #go"
                assert await recv(b1) == "* someone joined: 1 in #python"

                await a1.send("<a1> hello go")
                for ws in (a1, a2):
                    assert await chat_line(ws) == "<a1> hello go"
                # a1's message was fanned out before b1 speaks: had it reached b1, it would
                # come first. b1's next line is its own.
                await b1.send("<b1> hello python")
                assert await chat_line(b1) == "<b1> hello python"
                await a2.send("<a2> still go")
                for ws in (a1, a2):
                    assert await chat_line(ws) == "<a2> still go"

            # a2 and b1 left: a1 hears about a2 only.
            assert await recv(a1) == "* someone left: 1 in #go"
            await a1.send("<a1> alone")
            assert await recv(a1) == "<a1> alone"

    asyncio.run(talk())


# -- filewatch ----------------------------------------------------------------------------------


@pytest.fixture
def watched_file(tmp_path: Path) -> Path:
    path = tmp_path / "watched.txt"
    path.write_text("version 1\n", encoding="utf-8")
    return path


def test_filewatch_pushes_the_file_when_it_changes(watched_file: Path) -> None:
    running = start_example("filewatch", "--file", str(watched_file), "--interval", "0.05")
    try:
        status, _, body = get(running.http + "/")
        assert status == 200 and b'id="content"' in body
        assert get(running.http + "/name")[2].decode() == str(watched_file)

        async def watch() -> None:
            url = running.ws + "/ws"
            async with connect(url) as first:
                assert await recv(first) == "version 1\n"  # the content, at once on connect

                watched_file.write_text("version 2, longer\n", encoding="utf-8")
                assert await recv(first) == "version 2, longer\n"

                async with connect(url) as second:
                    assert await recv(second) == "version 2, longer\n"
                    # Saved the way editors do: a new file renamed over the old one.
                    replacement = watched_file.with_suffix(".tmp")
                    replacement.write_text("version 3\n", encoding="utf-8")
                    os.replace(replacement, watched_file)
                    for ws in (first, second):
                        assert await recv(ws) == "version 3\n"

                    # Invalid UTF-8 still makes a valid text message.
                    watched_file.write_bytes(b"bad \xff byte\n")
                    for ws in (first, second):
                        assert await recv(ws) == "bad \ufffd byte\n"

        asyncio.run(watch())
    finally:
        code, out = running.stop()
    assert code == 0, out
    assert "Traceback" not in out, out


# -- gophers ------------------------------------------------------------------------------------


async def expect_id(ws: ClientConnection) -> str:
    found = re.fullmatch(r"iam (\d+)", await recv(ws))
    assert found, "the first message names the client"
    return found.group(1)


@examples("gophers")
def test_gophers_relays_positions_to_the_others_only(example: Running) -> None:
    async def play() -> None:
        url = example.ws + "/ws"
        async with connect(url) as c1:
            id1 = await expect_id(c1)
            async with connect(url) as c2:
                id2 = await expect_id(c2)
                assert id2 != id1
                assert await recv(c2) == f"join {id1}"  # who was already here
                assert await recv(c1) == f"join {id2}"  # announced to the others

                await c1.send("10 20")
                assert await recv(c2) == f"set {id1} 10 20"
                # c1 is not sent its own position: its next message is c2's move.
                await c2.send("5 6")
                assert await recv(c1) == f"set {id2} 5 6"

                await c1.send("not a position")  # ignored
                await c1.send("-5 999999")  # clamped
                assert await recv(c2) == f"set {id1} 0 100000"

                async with connect(url) as c3:
                    id3 = await expect_id(c3)
                    # Everyone already here, and where: order of sessions is not promised.
                    state = {await recv(c3) for _ in range(4)}
                    assert state == {f"join {id1}", f"set {id1} 0 100000",
                                     f"join {id2}", f"set {id2} 5 6"}
                    for ws in (c1, c2):
                        assert await recv(ws) == f"join {id3}"

                    await c2.close()
                    for ws in (c1, c3):
                        assert await recv(ws) == f"leave {id2}"
                    await c3.send("1 2")
                    assert await recv(c1) == f"set {id3} 1 2"

    asyncio.run(play())


# -- the same hubs through `melody serve` -------------------------------------------------------


@pytest.mark.parametrize("name,socket", [
    ("chat", "/ws"), ("multichat", "/channel/lobby/ws"), ("gophers", "/ws")])
def test_melody_serve_runs_the_example_hubs(name: str, socket: str) -> None:
    running = Running(
        [sys.executable, "-m", "melody", "serve", f"examples.{name}.main:hub", "--port", "0"],
        r"serving on ws://127\.0\.0\.1:(\d+)", stream="stderr")
    try:
        assert get(running.http + "/")[0] == 200
        if name != "gophers":  # the pages that import the browser client get it from the hub
            assert get(running.http + "/melody-client.js")[0] == 200

        async def connects() -> str:
            async with connect(running.ws + socket) as ws:
                return await recv(ws) if name != "chat" else "ok"

        assert asyncio.run(connects())
    finally:
        code, out = running.stop()
    assert code == 0, out
    assert "Traceback" not in out, out


# -- chat in a real browser ---------------------------------------------------------------------

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing(why: str) -> None:
    """No browser: a failure in CI, where .ci/run installs one; a skip, said aloud, elsewhere."""
    if _in_ci():
        pytest.fail(f"{why} (CI must install Debian's chromium and PyPI's playwright)")
    print(f"\nskipping the browser test: {why}", file=sys.stderr)
    pytest.skip(why)


def _chromium() -> str:
    chosen = os.environ.get("MELODY_CHROMIUM")  # when set, that one or none
    candidates = [chosen] if chosen else [
        "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    _missing(f"no Chromium executable at {chosen}" if chosen else
             "no Chromium executable (apt-get install chromium, or set MELODY_CHROMIUM)")
    raise AssertionError("unreachable")


def test_chat_in_two_headless_chromium_pages() -> None:
    executable = _chromium()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install playwright)")
        raise

    ms = int(TIMEOUT * 1000)
    running = start_example("chat")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS,
                                         headless=True, timeout=30_000)
            try:
                # Two contexts: two separate browser sessions, like two people.
                page_a = browser.new_context().new_page()
                page_b = browser.new_context().new_page()
                for page in (page_a, page_b):
                    page.set_default_timeout(ms)
                    page.goto(running.http + "/", timeout=ms)
                    # Both sockets open before anyone speaks, or B would miss A's first line.
                    expect(page.locator("#status")).to_have_text("connected", timeout=ms)

                page_a.fill("#message", "hello from A")
                page_a.press("#message", "Enter")
                for page in (page_a, page_b):
                    expect(page.locator("#log .line")).to_have_text(["hello from A"], timeout=ms)
                expect(page_a.locator("#message")).to_have_value("", timeout=ms)

                page_b.fill("#message", "and <b>hello</b> from B")
                page_b.click("#send")
                both = ["hello from A", "and <b>hello</b> from B"]
                for page in (page_a, page_b):
                    # Shown as text, markup and all: the page never parses messages as HTML.
                    expect(page.locator("#log .line")).to_have_text(both, timeout=ms)
                    assert page.locator("#log b").count() == 0
            finally:
                browser.close()
    finally:
        code, out = running.stop()
    assert code == 0, out
