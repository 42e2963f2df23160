"""The command line: ``melody serve module:attr`` / ``python -m melody``, Ctrl-C, the demo."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent

APP = textwrap.dedent('''
    import melody

    hub = melody.Melody()

    @hub.handle_message
    def echo(session, msg):
        session.write("echo:" + msg)

    def make_hub():
        return hub
''')


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


class Served:
    def __init__(self, args: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "melody", *args, "--port", "0"], cwd=cwd, env=_env(),
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        assert self.proc.stderr is not None
        self.lines: list[str] = []
        for _ in range(200):
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            found = re.search(r"serving on ws://[^:]+:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                return
        self.proc.kill()
        raise AssertionError("server did not start:\n" + "".join(self.lines))

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "chatapp.py").write_text(APP)
    yield tmp_path


@pytest.mark.parametrize("spec", [["chatapp:hub"], ["chatapp:make_hub", "--factory"]])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_module_attr_and_stop_cleanly(app_dir: Path, spec: list[str], sig: int) -> None:
    served = Served(["serve", *spec], app_dir)

    async def talk() -> int:
        async with connect(f"ws://127.0.0.1:{served.port}/") as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), 5) == "echo:hi"
            code = await asyncio.to_thread(served.stop, sig)
            # The hub said goodbye with 1001 (going away) before exiting.
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            return code

    assert asyncio.run(talk()) == 0


def test_serve_names_a_missing_attribute(app_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "melody", "serve", "chatapp:nope"],
                            cwd=app_dir, env=_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "no attribute 'nope'" in result.stderr


def test_serve_refuses_something_that_is_not_a_hub(app_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "melody", "serve", "chatapp:echo"],
                            cwd=app_dir, env=_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "not a melody.Melody" in result.stderr


def test_demo_serves_its_page_health_check_and_chat(tmp_path: Path) -> None:
    served = Served(["demo"], tmp_path)
    try:
        base = f"http://127.0.0.1:{served.port}"
        page = urllib.request.urlopen(base + "/", timeout=5).read()
        assert b"<title>melody chat</title>" in page
        assert urllib.request.urlopen(base + "/healthz", timeout=5).read() == b"ok\n"
        # The page imports the browser client from the hub itself.
        assert b'from "/melody-client.js"' in page
        with urllib.request.urlopen(base + "/melody-client.js", timeout=5) as module:
            assert module.headers["Content-Type"] == "text/javascript; charset=utf-8"
            assert b"MelodyClient" in module.read()

        async def chat() -> None:
            url = f"ws://127.0.0.1:{served.port}/ws"
            async with connect(url) as alice, connect(url) as bob:
                await alice.send("hello from alice")
                assert await asyncio.wait_for(bob.recv(), 5) == "hello from alice"
                assert await asyncio.wait_for(alice.recv(), 5) == "hello from alice"

        asyncio.run(chat())
    finally:
        assert served.stop() == 0
