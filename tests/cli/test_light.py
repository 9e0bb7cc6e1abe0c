"""A call pays for its own command only (issue 34): help lists every command without importing one, a command's help
imports that command alone, and a call to the automatic server imports none of the heavy libraries: no torch,
transformers, numpy or PIL (the model's), no Typer, click or pydantic (a plain command line is parsed by bt itself),
no rich (nothing is shown on the terminal) and no httpx (the socket is spoken to with the standard library). Not timed:
the times are in benchmarks/bench_auto.py."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socketserver
import subprocess
import sys
import threading

import pytest
from helpers import bt_without

from bridgetower_cli.cli.app import COMMANDS

HEAVY = ("torch", "transformers", "numpy", "PIL", "pydantic")
COMMAND_MODULES = {f"bridgetower_cli.cli.{entry.where.split(':')[0]}" for entry in COMMANDS.values()}

# Runs bt's CLI (as the automatic server's client when its runtime folder holds a fake one, whose identity it
# records first), then says on stderr which modules it imported.
PROBE = (
    "import json, os, sys\n"
    "if os.environ.get('BT_SERVER') == 'auto':\n"
    "    from bridgetower_cli import autoserver\n"
    "    place = autoserver.Place(autoserver.runtime_folder())\n"
    "    identity = autoserver.ServerOptions().identity()\n"
    "    place.record.write_text(json.dumps({'pid': os.getpid(), 'identity': identity}))\n"
    "from bridgetower_cli.cli import main\n"
    "code = 0\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as end:\n    code = end.code\n"
    "print('MODULES=' + json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def probe(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """``bt ARGS`` in a fresh interpreter (no BT_* setting of the caller's), and the modules it imported."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("BT_")}
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                            env=clean | (env or {}), timeout=60)  # fmt: skip
    modules = json.loads(result.stderr.rsplit("MODULES=", 1)[1])
    return result, {name.split(".")[0] for name in modules} | set(modules)


def test_help_lists_every_command_and_imports_none():
    result, modules = probe("--help")
    assert result.returncode == 0 and all(name in result.stdout for name in COMMANDS)
    assert not modules & COMMAND_MODULES, modules & COMMAND_MODULES
    assert not (heavy := modules & set(HEAVY)), heavy
    assert "typer" not in modules  # (drawn by cli/listing.py; the next test holds it to Typer's own drawing)


@pytest.mark.parametrize("width", [40, 100, 200])
@pytest.mark.parametrize("colour", [False, True])
def test_the_light_help_is_byte_for_byte_typer_s(width, colour):
    """``bt --help`` without Typer draws exactly what Typer's rich help draws for the app, at any width, in colour
    or not (the summaries, options and styles it shows are held here, not trusted)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")} | {"COLUMNS": str(width)}
    env |= {"FORCE_COLOR": "1"} if colour else {"NO_COLOR": "1"}
    typer_s = "from bridgetower_cli.cli.app import main; main(['--help'])"
    light, drawn = (subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
                    for code in ("from bridgetower_cli.cli import main; main(['--help'])", typer_s))  # fmt: skip
    assert light.returncode == drawn.returncode == 0 and light.stdout == drawn.stdout and "score" in light.stdout


def test_a_command_s_help_imports_that_command_alone():
    result, modules = probe("score", "--help")
    assert result.returncode == 0 and "--top-k" in result.stdout
    assert modules & COMMAND_MODULES == {"bridgetower_cli.cli.pairs"}
    assert not (heavy := modules & set(HEAVY)), heavy


class _FakeServer(http.server.BaseHTTPRequestHandler):
    """The automatic server's answers to one score call: healthy, one record."""

    protocol_version = "HTTP/1.1"
    record = {"image": "cat.jpg", "text": "two cats", "logit": 0.5, "probability": 0.62}

    def do_GET(self):
        self._answer(json.dumps({"status": "ok"}).encode(), "application/json")

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        events = [{"event": "record", "record": self.record}, {"event": "end"}]
        self._answer("".join(json.dumps(event) + "\n" for event in events).encode(), "application/x-ndjson")

    def _answer(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def fake_automatic_server(runtime):
    folder = runtime / "bt"
    folder.mkdir(mode=0o700, parents=True)
    server = socketserver.ThreadingUnixStreamServer(str(folder / "server.sock"), _FakeServer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(not hasattr(socketserver, "ThreadingUnixStreamServer"), reason="needs Unix sockets")
def test_a_call_to_the_automatic_server_imports_only_the_request(tmp_path, samples):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "bridgetower"}))
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    with fake_automatic_server(runtime):
        env = {"XDG_RUNTIME_DIR": str(runtime), "BT_SERVER": "auto"}
        args = ("score", str(samples / "cat.jpg"), "two cats", "-m", str(checkpoint), "-f", "json")
        result, modules = probe(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [_FakeServer.record]
    assert not (heavy := modules & {*HEAVY, "rich", "httpx", "typer", "click"}), heavy  # (parsed by cli/quick.py)
    assert modules & COMMAND_MODULES == {"bridgetower_cli.cli.pairs"}


def test_a_typer_whose_internals_moved_still_parses_with_its_own_coercion():
    """bt's plain-value parsing leans on Typer internals: where they cannot be imported, Typer's coercion is used."""
    done = bt_without("bridgetower_cli.cli.coercion", "retrieve", "a cat", "-n", "--top-k", "x")
    assert done.returncode == 2 and "top-k" in done.stderr and "valid integer" in done.stderr, done.stderr
