"""filewatch: every open page shows a file's content, pushed again each time the file changes.

Go melody's ``examples/filewatch`` in Python, and the pattern for running a hub together with a
background task in one event loop: ``await hub.serve(...)`` starts listening and returns, then
``asyncio.create_task(watch(...))`` starts the task beside it; the task calls ``hub.broadcast``
whenever it has something to say. ::

    python examples/filewatch/main.py --port 5000    # watches examples/filewatch/file.txt
    python examples/filewatch/main.py --file notes.txt --port 5000

Then open http://127.0.0.1:5000/ and edit the file. The file is polled (``--interval``
seconds): portable and dependency-free; ``watchfiles`` or inotify would wake up sooner.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from pathlib import Path

import melody

HERE = Path(__file__).parent
PAGE = (HERE / "index.html").read_bytes()
HTML = [("Content-Type", "text/html; charset=utf-8")]


class Watched:
    """The file being watched and the content last sent to the pages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.content = ""

    def signature(self) -> tuple[int, int, int] | None:
        """What changes when the file does: modification time, size, inode (None if absent).

        The inode catches editors that save by writing a new file and renaming it over the old.
        """
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def read(self) -> str:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            return f"({self.path}: {exc.strerror or exc})"
        # A text message must be valid UTF-8: show undecodable bytes as U+FFFD, not an error.
        return data.decode("utf-8", errors="replace")


watched = Watched(HERE / "file.txt")
hub = melody.Melody(melody.Config(paths=["/ws"]))


@hub.handle_http
def pages(request: melody.Request) -> tuple[int, list[tuple[str, str]], bytes] | None:
    if request.path == "/":
        return 200, HTML, PAGE
    if request.path == "/name":
        return 200, [("Content-Type", "text/plain; charset=utf-8")], str(watched.path).encode()
    return None  # 404


@hub.handle_connect
def send_current(session: melody.Session) -> None:
    # A new page gets the current content at once; later versions come by broadcast.
    session.write(watched.content)


async def watch(interval: float) -> None:
    """Poll the file; broadcast its content whenever it changed. Runs until cancelled."""
    last = None  # the first look reads the file again: a change made since startup is not lost
    while True:
        await asyncio.sleep(interval)
        signature = watched.signature()
        if signature == last:
            continue
        last = signature
        # Reading may block on a slow disk: do it off the event loop, which serves the sockets.
        content = await asyncio.to_thread(watched.read)
        if content != watched.content:  # touched but unchanged: nothing to send
            watched.content = content
            hub.broadcast(content)  # one frame, written to every page


async def serve(host: str, port: int, interval: float) -> None:
    """Serve and watch until Ctrl-C or SIGTERM, then close every session with 1001."""
    watched.content = watched.read()  # before the first session can connect
    server = await hub.serve(host, port)  # listening from here on; returns at once
    host, port = server.sockets[0].getsockname()[:2]  # the real port when --port 0
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C raises instead
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)

    # The background task runs beside the server, on the same loop. Should it ever end (it
    # only would by failing), stop too rather than leave pages showing stale content.
    watcher = asyncio.create_task(watch(interval))
    watcher.add_done_callback(lambda _: stop.set())
    print(f"filewatch: open http://{host}:{port}/ and edit {watched.path} (Ctrl-C stops)",
          flush=True)
    await stop.wait()

    watcher.cancel()
    hub.close_with_msg(1001, "server shutting down")  # closes the listening socket too
    await hub.wait_closed(timeout=2)
    with contextlib.suppress(asyncio.CancelledError):
        await watcher  # raises whatever broke the watcher, if something did


def main() -> None:
    parser = argparse.ArgumentParser(description="melody example: push a file on change")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="port, 0 for any free one (5000)")
    parser.add_argument("--file", type=Path, default=watched.path,
                        help="the file to watch (examples/filewatch/file.txt)")
    parser.add_argument("--interval", type=float, default=0.25,
                        help="seconds between two looks at the file (0.25)")
    args = parser.parse_args()
    if args.interval <= 0:
        parser.error("--interval must be positive")
    watched.path = Path(os.path.abspath(args.file))
    melody.install_uvloop()  # a no-op when uvloop is not installed
    try:
        asyncio.run(serve(args.host, args.port, args.interval))
    except KeyboardInterrupt:  # where signal handlers cannot be installed (Windows)
        pass


if __name__ == "__main__":
    main()
