"""Small things several test modules share (no torch here)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

# Runs bt's CLI with the arguments given, then says on stderr which heavy modules it imported ("HEAVY=...").
CHECK_IMPORTS = (
    "import sys; from bridgetower_cli.cli import main\n"
    "code = 0\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
    "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
    "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
    "sys.exit(code)\n"
)

# One small image as a server takes it: what a request needs to reach the model when its images are not the point.
DOT = {
    "name": "dot.png",
    "data": "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGM8UaHBgA0wYRUdtBIAHicBeAYWg8oAAAAASUVORK5CYII=",
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def put_in_hf_cache(hub_cache: Path, repo_id: str, checkpoint: Path, ref: str = "main") -> str:
    """Lay ``checkpoint`` out as huggingface_hub does: blobs by hash, a snapshot of symlinks, a ref; its commit."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{ref}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for file in checkpoint.iterdir():
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return commit


def many_photos(samples, folder, count):
    """``count`` JPEGs, each of distinct content (a sample with bytes after its end marker, which decoders skip)."""
    folder.mkdir()
    images = [path.read_bytes() for path in sorted(samples.glob("*.jpg"))]
    for k in range(count):
        (folder / f"img{k:04d}.jpg").write_bytes(images[k % len(images)] + f"{folder.name}-{k}".encode())
    return folder


@contextlib.contextmanager
def held_answer(body: bytes):
    """A local URL whose answer the test holds: its headers at once, then a byte every half second (no reader's
    timeout ends the wait) until ``release`` is set, then the rest of ``body``: (url, asked, release), ``asked``
    set once a reader asks. Released at the end, whatever happened."""
    asked, release = threading.Event(), threading.Event()

    class Held(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.set()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            sent = 0
            with contextlib.suppress(OSError):  # (a reader that went away)
                while not release.wait(0.5) and sent < len(body) - 1:
                    sent += self.wfile.write(body[sent : sent + 1])
                self.wfile.write(body[sent:])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Held)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/held", asked, release
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()


@contextlib.contextmanager
def served(app, ready_s: float = 120.0):
    """A real server (uvicorn in a thread, configured as ``bt serve`` configures it) for an ASGI app on a free
    loopback port: its URL, stopped on exit."""
    import time

    import uvicorn

    from bridgetower_cli.server.connections import uvicorn_config

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(app, app.state.settings.graceful_timeout_s))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_s
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# -- the automatic server as tests see it: its runtime folder, its socket's processes, a wait with a deadline ------


def _autoserver():
    from bridgetower_cli import autoserver

    return autoserver


def private(folder: Path) -> Path:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def auto_env(runtime: Path, **more) -> dict:
    return {"XDG_RUNTIME_DIR": str(runtime), "BT_SERVER": "auto", **more}


def place(runtime: Path) -> _autoserver().Place:
    return _autoserver().Place(runtime / "bt")


def server_pids(socket: Path) -> list[int]:
    """The processes serving on ``socket`` (from /proc: whatever server.json says)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if b"--uds" in command and str(socket).encode() in command and state != "Z":
                found.append(int(entry.name))
    return found


def wait_until(condition, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def stop_all(folder: Path) -> None:
    socket = place(folder).socket
    _autoserver().stop(place(folder))
    for pid in server_pids(socket):
        os.kill(pid, signal.SIGKILL)


def as_nobody(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """bt run as the user nobody (the test runs as root, which bypasses every permission): needs setpriv."""
    command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "bridgetower_cli"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


NOBODY = os.geteuid() == 0 and shutil.which("setpriv") is not None  # (whether as_nobody can run)


def bt_without(module: str, *arguments: str) -> subprocess.CompletedProcess:
    """``bt ARGUMENTS`` in a fresh interpreter in which ``module`` cannot be imported."""
    script = (
        f"import sys; sys.modules[{module!r}] = None\nfrom bridgetower_cli.cli import main\nmain({list(arguments)!r})\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
