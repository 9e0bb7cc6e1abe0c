"""bt as a user runs it: the installed entry point in a subprocess, startup cost, and offline failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from helpers import CHECK_IMPORTS, closed_port

pytestmark = pytest.mark.slow  # every test here starts bt in a new process

BT = shutil.which("bt")


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["score", "--help"], ["score"], ["score", "x.jpg", "t", "--format", "xml"]],
)
def test_help_version_and_usage_errors_do_not_import_torch(args):
    result = subprocess.run([sys.executable, "-c", CHECK_IMPORTS, *args], capture_output=True, text=True)
    assert result.returncode in (0, 2)
    assert "HEAVY=\n" in result.stderr or result.stderr.rstrip().endswith("HEAVY=")


@pytest.mark.skipif(BT is None, reason="the bt entry point is not installed")
def test_entry_point_pipes_json(full_checkpoint, samples):
    command = f"{BT} score {samples / 'cat.jpg'} 'two cats' -m {full_checkpoint} -f json"
    consumer = "import json, sys; r = json.load(sys.stdin); print(r[0]['text'], len(r))"
    result = subprocess.run(f'{command} | {sys.executable} -c "{consumer}"', shell=True, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "two cats 1\n"


@pytest.mark.skipif(BT is None, reason="the bt entry point is not installed")
def test_stdout_holds_only_data_in_a_pipe(full_checkpoint, samples):
    result = subprocess.run(
        [BT, "score", samples / "cat.jpg", samples / "rocket.jpg", "a cat", "-m", full_checkpoint],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert len(json.loads(result.stdout)) == 2  # auto format is JSON when stdout is not a terminal


@pytest.mark.skipif(BT is None, reason="the bt entry point is not installed")
def test_uncached_hub_id_without_network_fails_fast(tmp_path, samples):
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_OFFLINE", None)
    start = time.monotonic()
    result = subprocess.run(
        [BT, "score", samples / "cat.jpg", "a cat", "--model", "BridgeTower/bridgetower-base-itm-mlm"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 1
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert "not in the local Hugging Face cache" in result.stderr and "--model DIR" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(BT is None, reason="the bt entry point is not installed")
def test_debug_shows_the_traceback(tmp_path):
    env = dict(os.environ, BT_DEBUG="1")
    result = subprocess.run([BT, "score", tmp_path / "missing.jpg", "a cat"], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "BtError" in result.stderr


@pytest.mark.skipif(BT is None, reason="the bt entry point is not installed")
def test_hub_id_is_served_from_the_local_cache_without_network(tmp_path, full_checkpoint, samples):
    """A hub id already in the Hugging Face cache loads with no hub reachable (the default model's path)."""
    repo = tmp_path / "hf" / "hub" / "models--BridgeTower--bridgetower-base-itm-mlm"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(full_checkpoint, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HOME=str(tmp_path / "hf"))
    env.pop("BT_MODEL", None)
    result = subprocess.run(
        [BT, "score", samples / "cat.jpg", "two cats", "-f", "json", "-d", "cpu"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["text"] == "two cats"
    models = subprocess.run([BT, "models", "-f", "json"], capture_output=True, text=True, env=env)
    cached = {m["id"] for m in json.loads(models.stdout) if m["cached"]}
    assert cached == {"BridgeTower/bridgetower-base-itm-mlm"}
