"""Shared fixtures: real-architecture checkpoints built once per session, sample images, and a CLI driver."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bridgetower_cli.cli import main
from bridgetower_cli.testing import build_checkpoint

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
# Where bt runs in the tests: the CPU unless BT_TEST_DEVICE says otherwise (the GPU check sets cuda), always fp32.
DEVICE = os.environ.get("BT_TEST_DEVICE", "cpu")
BT_ENV = {"BT_DEVICE": DEVICE, "BT_DTYPE": "float32", "BT_MODEL": None}


# Tests that build or load a checkpoint, or run bt in a subprocess, are slow: `pytest -m "not slow"` is the fast layer.
SLOW_FIXTURES = {"checkpoints", "full_checkpoint", "published"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints: every head, the ITM+MLM pair of the public -itm-mlm ones, ITC alone (what the stock
    contrastive class saves), and ones lacking heads."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "full": build_checkpoint(root / "full", "tiny", ("itm", "mlm", "itc")),
        "itm_mlm": build_checkpoint(root / "itm_mlm", "tiny", ("itm", "mlm"), seed=1),
        "mlm": build_checkpoint(root / "mlm", "tiny", ("mlm",), seed=2),
        "backbone": build_checkpoint(root / "backbone", "tiny", (), seed=3),
        "itc": build_checkpoint(root / "itc", "tiny", ("itc",), seed=4),
    }


# The four public checkpoints' layouts (see bridgetower_cli.testing): name -> (size, heads).
PUBLISHED = {
    "bridgetower-base": ("tiny", ()),
    "bridgetower-base-itm-mlm": ("tiny", ("itm", "mlm")),
    "bridgetower-large-itm-mlm": ("tiny-large", ("itm", "mlm")),
    "bridgetower-large-itm-mlm-itc": ("tiny-large", ("itm", "mlm", "itc")),
}


@pytest.fixture(scope="session")
def published(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints in the files of each public hub repo, as transformers 4.26-4.30 wrote them."""
    root = tmp_path_factory.mktemp("published")
    return {
        name: build_checkpoint(root / name, size, heads, seed=20 + k, layout="published")
        for k, (name, (size, heads)) in enumerate(PUBLISHED.items())
    }


@pytest.fixture(scope="session")
def full_checkpoint(checkpoints) -> Path:
    return checkpoints["full"]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def run_bt(*args: str, input: str | None = None, env: dict | None = None) -> Result:
    """Run ``bt`` in-process through its real entry point (``main``, the error boundary included)."""
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2 mixes stderr into stdout unless told
    except TypeError:
        runner = CliRunner()
    with runner.isolation(input=input, env=BT_ENV | (env or {})) as streams:
        out, err = streams[0], streams[1]
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        return Result(code, out.getvalue().decode(), err.getvalue().decode())


@pytest.fixture
def bt():
    return run_bt


def wait_for_rows(process, index: Path, rows: int, timeout_s: float) -> int:
    """Poll ``index`` while ``process`` runs until it has committed at least ``rows`` images: how many it had."""
    import sqlite3

    committed, deadline = 0, time.monotonic() + timeout_s
    while committed < rows and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        if index.exists():
            try:
                with sqlite3.connect(index, timeout=5) as db:
                    committed = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            except sqlite3.OperationalError:
                continue
    return committed


@pytest.fixture
def server(samples):
    """A local HTTP server on 127.0.0.1: /cat.jpg, /page.html (text/html), /huge.jpg (declares 1 GiB),
    /stream.jpg (no length, 1 MiB), /silent.jpg (answers after 30 s), anything else 404."""
    jpeg = (samples / "cat.jpg").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/silent.jpg":
                time.sleep(30)
                return
            if self.path == "/stream.jpg":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                for _ in range(16):
                    self.wfile.write(b"\0" * 65536)
                return
            routes = {"/cat.jpg": (jpeg, "image/jpeg"), "/page.html": (b"<html></html>", "text/html")}
            if self.path == "/huge.jpg":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(2**30))
                self.end_headers()
                return
            if self.path not in routes:
                self.send_error(404)
                return
            body, kind = routes[self.path]
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
