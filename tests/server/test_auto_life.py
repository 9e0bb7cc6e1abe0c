"""The automatic server's life: the first call starts it, later ones reuse it, two first calls start one, another
identity replaces it, it exits when idle, a stale socket is replaced, a server that cannot start falls back to in
process, a runtime folder open to others is refused."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from conftest import BT_ENV
from helpers import auto_env, place, private, server_pids, stop_all, wait_until

pytest.importorskip("fastapi")


pytestmark = pytest.mark.slow  # every test here starts a server process


@pytest.fixture
def runtime(tmp_path):
    """A private runtime folder of the test's own; whatever server it started is stopped at the end."""
    folder = private(tmp_path / "run")
    yield folder
    stop_all(folder)


def test_two_first_calls_start_one_server_which_later_calls_reuse(runtime, full_checkpoint, samples):
    env = {**os.environ, **{k: v for k, v in BT_ENV.items() if v}, **auto_env(runtime)}
    args = [sys.executable, "-m", "bridgetower_cli", "score", str(samples / "cat.jpg"), "a cat", "-m",
            str(full_checkpoint), "-f", "json"]  # fmt: skip
    calls = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [call.communicate(timeout=180) for call in calls]
    assert [call.returncode for call in calls] == [0, 0], results
    assert all(b"running in this process" not in err for _, err in results)
    (pid,) = server_pids(place(runtime).socket)
    assert place(runtime).log.read_text().count("starting the automatic server") == 1
    again = subprocess.run(args, env=env, capture_output=True, timeout=120)
    assert again.returncode == 0 and server_pids(place(runtime).socket) == [pid]
    assert place(runtime).started()["pid"] == pid


def test_a_server_of_another_identity_is_replaced(bt, runtime, full_checkpoint, samples):
    """Other server options (a batch size), or another bt version or Python (what server.json records): the
    server is stopped and a new one started."""
    args = ["score", samples / "cat.jpg", "a cat", "-m", full_checkpoint, "-f", "json"]
    assert bt(*args, env=auto_env(runtime)).code == 0
    (first,) = server_pids(place(runtime).socket)
    assert bt(*args, "--batch-size", "2", env=auto_env(runtime)).code == 0
    (second,) = server_pids(place(runtime).socket)
    assert second != first and wait_until(lambda: first not in server_pids(place(runtime).socket), 30)
    record = place(runtime).started()
    place(runtime).record.write_text(json.dumps({**record, "identity": "an-older-bt"}))
    assert bt(*args, "--batch-size", "2", env=auto_env(runtime)).code == 0
    (third,) = server_pids(place(runtime).socket)
    assert third not in (first, second)


def test_the_server_exits_when_idle_and_a_later_call_starts_another(bt, runtime, full_checkpoint, samples):
    args = ["score", samples / "cat.jpg", "a cat", "-m", full_checkpoint, "-f", "json"]
    assert bt(*args, env=auto_env(runtime, BT_KEEP_ALIVE="1s")).code == 0
    (pid,) = server_pids(place(runtime).socket)
    assert wait_until(lambda: not server_pids(place(runtime).socket), 60), "the idle server did not exit"
    assert not place(runtime).socket.exists()  # (it removed its socket)
    assert "Traceback" not in place(runtime).log.read_text()
    assert bt(*args, env=auto_env(runtime, BT_KEEP_ALIVE="1s")).code == 0
    assert server_pids(place(runtime).socket) not in ([], [pid])


def test_a_stale_socket_of_a_killed_server_is_replaced(bt, runtime, full_checkpoint, samples):
    args = ["score", samples / "cat.jpg", "a cat", "-m", full_checkpoint, "-f", "json"]
    first = bt(*args, env=auto_env(runtime))
    (pid,) = server_pids(place(runtime).socket)
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not server_pids(place(runtime).socket), 30)
    assert stat.S_ISSOCK(os.lstat(place(runtime).socket).st_mode)  # left behind
    second = bt(*args, env=auto_env(runtime))
    assert second.code == 0 and second.stdout == first.stdout and "running in this process" not in second.stderr
    assert server_pids(place(runtime).socket) not in ([], [pid])


def test_a_wedged_server_is_said_and_replaced(bt, runtime, full_checkpoint, samples):
    """Tries (issue 31): the automatic server stopped with SIGSTOP (it accepts connections and never answers).
    Asserts: --status says it is not answering, with its pid; the next call ends it and answers correctly within
    30 s (not the 660 s read timeout)."""
    args = ["score", samples / "cat.jpg", "a cat", "-m", full_checkpoint, "-f", "json"]
    first = bt(*args, env=auto_env(runtime))
    (pid,) = server_pids(place(runtime).socket)
    os.kill(pid, signal.SIGSTOP)
    try:
        status = bt("serve", "--status", env={"XDG_RUNTIME_DIR": str(runtime)})
        assert status.code == 1 and f"not answering (pid {pid})" in status.stderr, status.stderr
        start = time.monotonic()
        second = bt(*args, env=auto_env(runtime))
        assert time.monotonic() - start < 30 and second.code == 0 and second.stdout == first.stdout, second.stderr
        assert "running in this process" not in second.stderr
        assert pid not in server_pids(place(runtime).socket)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_server_that_cannot_start_is_one_warning_and_the_call_runs_in_process(bt, runtime, full_checkpoint, samples):
    folder = private(runtime / "bt")
    place(runtime).socket.write_text("not a socket")  # (bt serve refuses to replace a file it did not make)
    args = ["score", samples / "cat.jpg", "a cat", "-m", full_checkpoint, "-f", "json"]
    result = bt(*args, env=auto_env(runtime))
    local = bt(*args)
    assert result.code == 0 and result.stdout == local.stdout
    (line,) = result.stderr.strip().splitlines()
    assert "did not start" in line and str(folder / "server.log") in line and "running in this process" in line
    assert "exists and is not a socket" in (folder / "server.log").read_text()
    assert place(runtime).socket.read_text() == "not a socket"


def test_a_runtime_folder_open_to_others_is_refused(bt, runtime, full_checkpoint, samples):
    (runtime / "bt").mkdir(mode=0o755)
    os.chmod(runtime / "bt", 0o755)
    result = bt("score", samples / "cat.jpg", "a cat", "-m", full_checkpoint, "-f", "json", env=auto_env(runtime))
    assert result.code == 0 and "is not private" in result.stderr and "running in this process" in result.stderr
    assert not (runtime / "bt" / "server.sock").exists()


def test_stop_and_status_without_a_server(bt, runtime):
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    status = bt("serve", "--status", env=env)
    assert status.code == 1 and "no automatic bt server is running" in status.stderr
    stop = bt("serve", "--stop", env=env)
    assert stop.code == 0 and "no automatic bt server was running" in stop.stderr
