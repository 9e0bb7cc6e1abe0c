"""``bridgetower_cli.server:app`` under a real ASGI runner (issue 29): ``uvicorn bridgetower_cli.server:app`` serves
what ``bt`` computes; without a key it refuses, in one line, to start beyond loopback however the address is given;
a Unix socket it serves on is 0600. And the pieces: what the runner was told, what the process listens on."""

from __future__ import annotations

import base64
import contextlib
import importlib
import inspect
import os
import queue
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest
import requests
from conftest import DEVICE

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from bridgetower_cli.server import runner  # noqa: E402
from bridgetower_cli.server.entry import AsgiApp  # noqa: E402

START_S = 120.0  # for a runner to start (or to fail), generously: a loaded CI machine


# -- the pieces ----------------------------------------------------------------------------------------------------


def test_the_package_s_app_is_the_asgi_callable_and_importing_it_is_light():
    package = importlib.import_module("bridgetower_cli.server")
    assert isinstance(package.app, AsgiApp) and inspect.iscoroutinefunction(package.app.__call__)
    check = (
        "import sys, bridgetower_cli.server, bridgetower_cli.cli.serve\n"
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'pydantic', 'starlette', 'torch') if m in sys.modules))"
    )
    shown = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.strip() == "[]", shown.stderr


GUNICORN = ["-k", "uvicorn.workers.UvicornWorker", "bridgetower_cli.server:app"]


@pytest.mark.parametrize(
    "argv, environ, hosts",
    [
        (["bridgetower_cli.server:app", "--host", "0.0.0.0"], {}, ["0.0.0.0"]),
        (["bridgetower_cli.server:app", "--host=::", "--port", "80"], {}, ["::"]),
        (["bridgetower_cli.server:app"], {"UVICORN_HOST": "10.0.0.1"}, ["10.0.0.1"]),
        ([*GUNICORN, "-b", "0.0.0.0:80", "--bind=[::1]:81", "-b127.0.0.1"], {}, ["0.0.0.0", "::1", "127.0.0.1"]),
        ([*GUNICORN, "--bind", "unix:/run/x.sock", "-b", ":8000"], {}, ["0.0.0.0"]),
        (GUNICORN, {"GUNICORN_CMD_ARGS": "--workers 2 --bind 192.168.0.9:8000"}, ["192.168.0.9"]),
        (["bridgetower_cli.server:app", "--port", "80"], {}, []),
    ],
)
def test_the_addresses_a_runner_was_told(argv, environ, hosts):
    assert runner.told_hosts(argv, environ) == hosts


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="reads Linux's /proc")
def test_the_sockets_this_process_listens_on_are_found():
    with socket.socket() as public, socket.socket() as loopback, socket.socket() as idle:
        public.bind(("0.0.0.0", 0))
        public.listen()
        loopback.bind(("127.0.0.1", 0))
        loopback.listen()
        idle.bind(("127.0.0.3", 0))  # bound, not listening: not served on
        found = runner.listening_hosts()
    assert "0.0.0.0" in found and "127.0.0.1" in found and "127.0.0.3" not in found
    if socket.has_ipv6:
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET6) as six:
            six.bind(("::", 0))
            six.listen()
            assert "::" in runner.listening_hosts()


@pytest.mark.skipif(not os.path.exists("/proc/net/unix"), reason="reads Linux's /proc")
def test_unix_sockets_are_made_0600(tmp_path):
    placeholder = tmp_path / "uvicorn.sock"
    runner.secure_unix_sockets(["bridgetower_cli.server:app", "--uds", str(placeholder)], {})
    assert stat.S_ISSOCK(os.lstat(placeholder).st_mode) and stat.S_IMODE(os.lstat(placeholder).st_mode) == 0o600
    listening = tmp_path / "gunicorn.sock"
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(listening))
        os.chmod(listening, 0o777)
        bound.listen()
        runner.secure_unix_sockets([], {})
        assert stat.S_IMODE(os.lstat(listening).st_mode) == 0o600
    other = tmp_path / "other"
    other.write_text("not a socket")
    runner.secure_unix_sockets(["--uds", str(other)], {"UVICORN_UDS": str(tmp_path / "env.sock")})
    assert other.read_text() == "not a socket" and stat.S_ISSOCK(os.lstat(tmp_path / "env.sock").st_mode)


# -- uvicorn bridgetower_cli.server:app, for real ------------------------------------------------------------------


class Uvicorn:
    """``uvicorn bridgetower_cli.server:app ARGS`` in a subprocess; its log read as it comes."""

    def __init__(self, args, env: dict):
        command = [sys.executable, "-m", "uvicorn", "bridgetower_cli.server:app", "--log-level", "info", *args]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines: queue.Queue = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def started(self) -> str | None:
        """What uvicorn says it runs on, once it does; None if it exits first (within ``START_S``)."""
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                return None
            self.log.append(line)
            if "Uvicorn running on" in line:
                return line.split("Uvicorn running on ", 1)[1].split(" (Press")[0]
        raise AssertionError(f"uvicorn neither started nor stopped in {START_S:g} s: {''.join(self.log)}")

    def failed(self) -> tuple[int, str]:
        """The exit status and the whole log of a runner that must stop by itself."""
        assert self.started() is None, "".join(self.log)
        return self.process.wait(timeout=START_S), "".join(self.log)  # (started() read the log to its end)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=60)


@pytest.fixture
def environment(tmp_path) -> dict:
    """The runner's environment: bt's test device, fp32, no key, its indexes under the test's folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BT_", "UVICORN_", "GUNICORN_"))}
    return env | {"BT_DEVICE": DEVICE, "BT_DTYPE": "float32", "BT_SERVE_INDEX_DIR": str(tmp_path / "indexes")}


@pytest.fixture
def run_uvicorn():
    started = []

    def run(*args, env: dict) -> Uvicorn:
        started.append(Uvicorn([str(a) for a in args], env))
        return started[-1]

    yield run
    for server in started:
        server.stop()


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) <= 1e-5


@pytest.mark.slow
def test_uvicorn_serves_what_bt_computes(run_uvicorn, environment, full_checkpoint, samples, bt):
    env = environment | {"BT_SERVE_MODELS": str(full_checkpoint)}
    address = run_uvicorn("--host", "127.0.0.1", "--port", "0", env=env).started()
    assert address and address.startswith("http://127.0.0.1:")
    text = "two cats on a couch"
    body = {"model": str(full_checkpoint), "input": [text]}
    served = requests.post(f"{address}/v1/embeddings", json=body, timeout=120)
    assert served.status_code == 200, served.text
    (expected,) = bt("embed", "--kind", "text", "-t", text, "-m", full_checkpoint, "-f", "json").json()
    assert close(served.json()["data"][0]["embedding"], expected["embedding"])
    image = "data:image/jpeg;base64," + base64.b64encode((samples / "cat.jpg").read_bytes()).decode()
    body = {"model": str(full_checkpoint), "input": [image], "modality": "image"}
    served = requests.post(f"{address}/v1/embeddings", json=body, timeout=120)
    (expected,) = bt("embed", "--kind", "image", samples / "cat.jpg", "-m", full_checkpoint, "-f", "json").json()
    assert close(served.json()["data"][0]["embedding"], expected["embedding"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, more",
    [
        (["--host", "0.0.0.0"], {}),
        (["--host=::"], {}),
        ([], {"UVICORN_HOST": "0.0.0.0"}),
        ([], {"BT_SERVE_HOST": "0.0.0.0"}),
    ],
)
def test_uvicorn_refuses_a_public_address_without_a_key(run_uvicorn, environment, args, more):
    code, log = run_uvicorn(*args, "--port", "0", env=environment | more).failed()
    errors = [line for line in log.splitlines() if "bt: error:" in line]
    assert code != 0 and len(errors) == 1 and "needs an API key" in errors[0], log
    assert "Traceback" not in log


@pytest.mark.slow
@pytest.mark.parametrize(
    "more, said",
    [
        ({"BT_SERVE_MAX_TEXTS": "many"}, "BT_SERVE_MAX_TEXTS='many'"),
        ({"BT_SERVE_MODELS": "/no/such/model"}, "/no/such/model"),
    ],
)
def test_uvicorn_says_a_bad_setting_in_one_line(run_uvicorn, environment, more, said):
    code, log = run_uvicorn("--port", "0", env=environment | more).failed()
    errors = [line for line in log.splitlines() if "bt: error:" in line]
    assert code != 0 and len(errors) == 1 and said in errors[0], log
    assert "Traceback" not in log


@pytest.mark.slow
def test_uvicorn_with_a_key_may_serve_beyond_loopback(run_uvicorn, environment):
    server = run_uvicorn("--host", "0.0.0.0", "--port", "0", env=environment | {"BT_API_KEY": "s3cret"})
    address = server.started()
    assert address and address.startswith("http://0.0.0.0:"), "".join(server.log)
    port = address.rsplit(":", 1)[1]
    assert requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=60).status_code == 401
    keyed = requests.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer s3cret"}, timeout=60)
    assert keyed.status_code == 200


@pytest.mark.slow
def test_uvicorn_s_unix_socket_is_0600(run_uvicorn, environment, tmp_path):
    path = tmp_path / "bt.sock"
    server = run_uvicorn("--uds", path, env=environment)
    assert server.started() == f"unix socket {path}", "".join(server.log)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(60)
        client.connect(str(path))
        client.sendall(b"GET /health HTTP/1.1\r\nHost: bt\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"status":"ok"}')
