"""Images read ahead of the model by decode threads: the same images in the same order, the same skips."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch

from bridgetower_cli.model.loading import load_model
from bridgetower_cli.model.runtime import Runtime
from bridgetower_cli.records import Outcome, Reporter
from bridgetower_cli.sources import ImageSource
from bridgetower_cli.tasks.batching import read_images


@pytest.fixture(scope="module")
def runtime(checkpoints):
    return Runtime(load_model(checkpoints["full"], "full", "cpu", "float32"))


@pytest.fixture
def mixed(samples, tmp_path):
    """Good photos with unreadable files between them."""
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    for name in ("cat.jpg", "rocket.jpg", "cameraman-gray.png", "coffee.jpg"):
        shutil.copy(samples / name, tmp_path / name)
    names = ["cat.jpg", "empty.jpg", "rocket.jpg", "gone.jpg", "cameraman-gray.png", "notes.jpg", "coffee.jpg"]
    return [ImageSource(name, path=str(tmp_path / name)) for name in names]


def read(runtime, sources):
    outcome = Outcome()
    read_in = list(read_images(runtime, sources, outcome, Reporter()))
    return [s.name for s, _ in read_in], [p for _, p in read_in], [(s.name, s.reason) for s in outcome.skipped]


def test_decode_threads_keep_order_and_skips(runtime, mixed, monkeypatch):
    monkeypatch.setenv("BT_DECODE_WORKERS", "1")
    one = read(runtime, mixed)
    monkeypatch.setenv("BT_DECODE_WORKERS", "4")
    four = read(runtime, mixed)
    assert one[0] == four[0] == ["cat.jpg", "rocket.jpg", "cameraman-gray.png", "coffee.jpg"]
    assert all(torch.equal(a, b) for a, b in zip(one[1], four[1]))
    assert one[2] == four[2] and [name for name, _ in four[2]] == ["empty.jpg", "gone.jpg", "notes.jpg"]


def test_images_decode_in_parallel(runtime, mixed, monkeypatch):
    """Two images are decoded at the same time: each waits at a barrier for the other (no second thread, no pass)."""
    monkeypatch.setenv("BT_DECODE_WORKERS", "2")
    together = threading.Barrier(2, timeout=30)
    prepare = runtime.prepare_image

    def meet_then_prepare(data):
        together.wait()
        return prepare(data)

    monkeypatch.setattr(runtime, "prepare_image", meet_then_prepare)
    names, _, skipped = read(runtime, [mixed[0], mixed[2]])
    assert names == ["cat.jpg", "rocket.jpg"] and not skipped
