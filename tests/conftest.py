"""Shared fixtures: real-architecture checkpoints built once per session, sample images, and a CLI driver."""

from __future__ import annotations

import json
import os
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


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints: every head, the ITM+MLM pair of the public -itm-mlm ones, and ones lacking heads."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "full": build_checkpoint(root / "full", "tiny", ("itm", "mlm", "itc")),
        "itm_mlm": build_checkpoint(root / "itm_mlm", "tiny", ("itm", "mlm"), seed=1),
        "mlm": build_checkpoint(root / "mlm", "tiny", ("mlm",), seed=2),
        "backbone": build_checkpoint(root / "backbone", "tiny", (), seed=3),
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
