"""`--engine ray` (a local Ray, 2 CPUs, the tiny checkpoint): the same embeddings, skips and index as the local
engine; interrupted builds resume; Parquet shards; a clear error without the extra."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from conftest import DEVICE, wait_for_rows
from PIL import Image

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def folder(samples, tmp_path):
    """The samples and unusual files: CMYK JPEG, 16-bit PNG, a 20:1 panorama, a file that is no image."""
    photos = tmp_path / "photos"
    shutil.copytree(samples, photos, ignore=shutil.ignore_patterns("*.md", "*.json"))
    coffee = Image.open(samples / "coffee.jpg").convert("RGB").resize((120, 90))
    coffee.convert("CMYK").save(photos / "cmyk.jpg")
    Image.fromarray(np.asarray(coffee.convert("L"), np.uint16) * 257).save(photos / "sixteen.png")
    coffee.resize((2000, 100)).save(photos / "panorama.jpg")
    (photos / "broken.jpg").write_text("not a jpeg")
    return photos


def index_contents(path):
    with sqlite3.connect(path) as db:
        paths = sorted(p for (p,) in db.execute("SELECT path FROM images"))
        failures = sorted(db.execute("SELECT path, reason FROM failures"))
    from bridgetower_cli.index.store import EmbeddingIndex

    _, matrix = EmbeddingIndex.for_reading(path).embeddings(paths)
    return paths, matrix, failures


@pytest.mark.parametrize("decoding", [[], ["--fast-decode"]])
def test_index_on_ray_equals_the_local_engine(bt, full_checkpoint, folder, tmp_path, decoding):
    """With a full decode and with --fast-decode (a large JPEG is read at a quarter of its size, or in full)."""
    Image.open(folder / "coffee.jpg").resize((2400, 1800)).save(folder / "large.jpg")
    args = ["index", folder, "-m", full_checkpoint, "-b", "3", "-f", "json", *decoding]
    local = bt(*args, "--index", tmp_path / "local.sqlite")
    remote = bt(*args, "--index", tmp_path / "ray.sqlite", "--engine", "ray")
    assert local.code == remote.code == 3, remote.stderr
    assert local.json() == remote.json()
    assert remote.stderr.count("broken.jpg") == 1 and "padded to a taller frame" in remote.stderr
    paths, matrix, failures = index_contents(tmp_path / "ray.sqlite")
    expected_paths, expected, expected_failures = index_contents(tmp_path / "local.sqlite")
    assert paths == expected_paths and len(paths) == 9 and failures == expected_failures
    assert float(np.abs(matrix - expected).max()) <= 1e-5


def test_a_killed_build_resumes_to_the_same_index(bt, full_checkpoint, samples, tmp_path):
    """SIGKILL the driver of a Ray build once it has committed batches; the next run embeds only the rest, and the
    index ends with every file once, as the local engine builds it."""
    from helpers import many_photos

    folder = many_photos(samples, tmp_path / "many", 240)
    index = tmp_path / "ix.sqlite"
    env = dict(os.environ, BT_DEVICE=DEVICE, BT_DTYPE="float32")
    command = [
        sys.executable,
        "-m",
        "bridgetower_cli",
        "index",
        folder,
        "-m",
        full_checkpoint,
        "--index",
        index,
        "--engine",
        "ray",
        "-b",
        "2",
        "-q",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed = wait_for_rows(process, index, 4, timeout_s=900)  # (two busy cores: Ray took over 240 s)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 4 <= committed < 240, "the build finished or never committed before the kill"
    with sqlite3.connect(index) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    resumed = bt("index", folder, "-m", full_checkpoint, "--index", index, "--engine", "ray", "-f", "json")
    (stats,) = resumed.json()
    assert stats["new"] == 240 - kept and stats["unchanged"] == kept
    paths, matrix, _ = index_contents(index)
    assert len(paths) == len(set(paths)) == 240
    local = bt("index", folder, "-m", full_checkpoint, "--index", tmp_path / "local.sqlite")
    assert local.code == 0
    expected_paths, expected, _ = index_contents(tmp_path / "local.sqlite")
    assert paths == expected_paths and float(np.abs(matrix - expected).max()) <= 1e-5


def test_embed_on_ray_writes_parquet_shards_that_resume(bt, full_checkpoint, folder, tmp_path, monkeypatch):
    from bridgetower_cli.engines import ray as engines

    monkeypatch.setattr(engines, "SHARD", 4)
    output = tmp_path / "shards"
    result = bt("embed", folder, "--engine", "ray", "-m", full_checkpoint, "-o", output, "-f", "json")
    assert result.code == 3 and result.json()["count"] == 8
    shards = sorted(output.glob("part-*.parquet"))
    assert len(shards) == 3  # 9 files, 4 per shard
    table = pq.read_table(output)
    assert table.column_names == ["id", "kind", "model", "embedding"] and table.num_rows == 8
    local = {r["image"]: r["embedding"] for r in bt("embed", folder, "-m", full_checkpoint, "-f", "json").json()}
    for row in table.to_pylist():
        assert max(abs(a - b) for a, b in zip(row["embedding"], local[row["id"]])) <= 1e-5
    shards[1].unlink()
    again = bt("embed", folder, "--engine", "ray", "-m", full_checkpoint, "-o", output, "-f", "json")
    assert "images already in complete shards" in again.stderr and again.json()["count"] == 4
    assert pq.read_table(output).num_rows == 8


def test_without_the_extra_the_error_names_the_install(bt, full_checkpoint, folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as where Ray is not installed
    result = bt("index", folder, "-m", full_checkpoint, "--engine", "ray", "--index", folder / "ix.sqlite")
    assert result.code == 1
    assert 'pip install "bridgetower-cli[ray]"' in result.stderr and len(result.stderr.strip().splitlines()) == 1
