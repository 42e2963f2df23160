"""The benchmark hub on Go's olahol/melody (``gomelody/main.go``), built on first use.

    python bench/servers/gomelody_hub.py --port 0 [--gomaxprocs W]   # prints "READY <port>"

Needs Go (1.19 or newer; Debian: ``apt-get install golang-go``) and the sources of
github.com/olahol/melody and github.com/gorilla/websocket. Found, in this order:
``MELODY_GO_MELODY_SRC`` (a checkout of olahol/melody), ``$GOPATH/src/github.com/olahol/melody``,
``/usr/share/gocode/src/...`` (Debian's golang-*-dev packages; gorilla/websocket is
``golang-github-gorilla-websocket-dev``); and, with network access, ``go get`` in module mode.
The binary is cached under ``~/.cache/melody-bench`` by a hash of its inputs.

``--gomaxprocs W`` runs it on W cores (GOMAXPROCS), the Go side of a W-core comparison.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "gomelody", "main.go")
DEBIAN_GOCODE = "/usr/share/gocode"


def go_path_dirs(go: str) -> list[str]:
    dirs = [d for d in subprocess.run([go, "env", "GOPATH"], capture_output=True, text=True,
                                      check=False).stdout.strip().split(os.pathsep) if d]
    return [*dirs, DEBIAN_GOCODE]


def find_package(dirs: list[str], package: str, env_var: str | None = None) -> str | None:
    if env_var and os.environ.get(env_var):
        return os.environ[env_var]
    for d in dirs:
        candidate = os.path.join(d, "src", package)
        if os.path.isdir(candidate):
            return candidate
    return None


def build(go: str) -> str:
    """The path of the built binary (built now unless cached)."""
    dirs = go_path_dirs(go)
    melody_src = find_package(dirs, "github.com/olahol/melody", "MELODY_GO_MELODY_SRC")
    gorilla_src = find_package(dirs, "github.com/gorilla/websocket")
    digest = hashlib.sha256(open(SOURCE, "rb").read())
    for src in (melody_src, gorilla_src):
        if src:
            for name in sorted(os.listdir(src)):
                if name.endswith(".go"):
                    digest.update(open(os.path.join(src, name), "rb").read())
    cache = os.path.join(os.path.expanduser("~"), ".cache", "melody-bench")
    os.makedirs(cache, exist_ok=True)
    binary = os.path.join(cache, f"gomelody-{digest.hexdigest()[:16]}")
    if os.path.exists(binary):
        return binary
    with tempfile.TemporaryDirectory(prefix="gomelody-") as work:
        env = dict(os.environ, GOFLAGS="", CGO_ENABLED="0",
                   GOCACHE=os.path.join(cache, "go-build"))
        if melody_src and gorilla_src:
            # GOPATH mode: the two packages' sources as they are found, no network.
            gopath = os.path.join(work, "gopath")
            os.makedirs(os.path.join(gopath, "src", "github.com", "olahol"))
            os.makedirs(os.path.join(gopath, "src", "github.com", "gorilla"))
            os.symlink(melody_src, os.path.join(gopath, "src", "github.com", "olahol", "melody"))
            os.symlink(gorilla_src,
                       os.path.join(gopath, "src", "github.com", "gorilla", "websocket"))
            main_dir = os.path.join(gopath, "src", "melodybench")
            os.makedirs(main_dir)
            shutil.copy(SOURCE, main_dir)
            env.update(GO111MODULE="off", GOPATH=gopath)
            command = [go, "build", "-o", binary, "melodybench"]
            cwd = main_dir
        else:
            # Module mode: downloads olahol/melody and its dependencies (needs network).
            shutil.copy(SOURCE, work)
            subprocess.run([go, "mod", "init", "melodybench"], cwd=work, env=env, check=True,
                           capture_output=True)
            got = subprocess.run([go, "get", "github.com/olahol/melody"], cwd=work, env=env,
                                 capture_output=True, text=True)
            if got.returncode != 0:
                raise SystemExit(
                    "gomelody: the sources of github.com/olahol/melody and"
                    " github.com/gorilla/websocket are not on this machine and could not be"
                    " downloaded; set MELODY_GO_MELODY_SRC to a checkout of olahol/melody and"
                    " install golang-github-gorilla-websocket-dev (Debian), or give go"
                    f" network access:\n{got.stderr[-1500:]}")
            command = [go, "build", "-o", binary, "."]
            cwd = work
        built = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        if built.returncode != 0:
            raise SystemExit(f"gomelody: go build failed:\n{built.stderr[-3000:]}")
    return binary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gomaxprocs", type=int, default=1,
                        help="GOMAXPROCS: the cores Go may run on at once (default 1)")
    args = parser.parse_args()
    go = shutil.which("go")
    if go is None:
        raise SystemExit("gomelody: no 'go' command (Debian: apt-get install golang-go)")
    binary = build(go)
    env = dict(os.environ, GOMAXPROCS=str(args.gomaxprocs))
    os.execve(binary, [binary, "--host", args.host, "--port", str(args.port)], env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
