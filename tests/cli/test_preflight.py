"""Mistakes knowable from the arguments, the files and the checkpoint's config.json are said before torch is
imported (issue 30), in process and on the way to the automatic server alike (no server is started for them)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import DEVICE
from helpers import CHECK_IMPORTS

pytestmark = pytest.mark.slow
NVIDIA = any(os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/dxg"))


def run(*args, env: dict) -> subprocess.CompletedProcess:
    environment = dict(os.environ, BT_DEVICE=DEVICE, **env)
    command = [sys.executable, "-c", CHECK_IMPORTS, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)


def cases(checkpoints, samples) -> list[tuple[list, int, str]]:
    full, cat = checkpoints["full"], samples / "cat.jpg"
    found = [
        (["explain", cat, "a cat", "-m", full, "--dtype", "int8"], 2, "int8 graphs have no gradients"),
        (["explain", cat, "a cat", "-m", full, "--layer", "99"], 1, "--layer 99 is out of range"),
        (["index", samples, "-m", full, "--index", cat], 1, "is not a bt index (not an SQLite file)"),
        (["retrieve", "a cat", samples, "-m", full, "--index", cat], 1, "is not a bt index (not an SQLite file)"),
        (["embed", cat, "-m", checkpoints["itm_mlm"]], 1, "no contrastive embedding (ITC) head"),
        (["score", cat, "a cat", "-m", checkpoints["itc"]], 1, "no image-text matching (ITM) head"),
        (["fill-mask", cat, "a <mask>", "-m", full, "--targets", "cat,zzqqxx"], 1, "'zzqqxx' is not a word"),
    ]
    if not NVIDIA:
        found.append((["score", cat, "a cat", "-m", full, "--device", "cuda"], 1, "CUDA is not available"))
    return found


@pytest.mark.parametrize("server", [None, "auto"])
def test_mistakes_are_refused_before_torch_loads(checkpoints, samples, tmp_path, server):
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "BT_SERVER": server} if server else {}
    for args, code, words in cases(checkpoints, samples):
        result = run(*args, env=env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == code and words in lines[0], (args, result.stderr)
        assert lines[-1] == "HEAVY=" and len(lines) == 2, (args, result.stderr)  # (one line, and no torch)
    assert not (tmp_path / "bt").exists() or not any((tmp_path / "bt").glob("*.sock"))  # (no server started)
