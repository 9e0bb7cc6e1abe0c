"""`bt embed`: unimodal embeddings from the unimodal passes only, all equal to the stock contrastive class."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DEVICE
from reference import contrastive, rgb

from bridgetower_cli.model.loading import load_model
from bridgetower_cli.model.runtime import Runtime
from bridgetower_cli.records import Outcome
from bridgetower_cli.sources import expand_image_sources
from bridgetower_cli.tasks import pairs

TEXTS = ["a cat", "a rocket launch at night over the water"]


def close(a, b) -> bool:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= 1e-5


def test_image_embeddings_equal_stock(bt, full_checkpoint, samples):
    result = bt("embed", samples, "-m", full_checkpoint, "-f", "jsonl", "-b", "3")
    assert result.code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 5
    for record in records:
        assert record["kind"] == "image" and "text" not in record and record["dim"] == 32
        assert record["model"] == str(full_checkpoint)
        stock = contrastive(full_checkpoint, rgb(record["image"]), "anything").image_embeds[0]
        assert close(record["embedding"], stock)
        assert abs(np.linalg.norm(record["embedding"]) - 1) < 1e-5


def test_text_embeddings_equal_stock(bt, full_checkpoint, samples):
    records = bt("embed", "--text", TEXTS[0], "--text", TEXTS[1], "-m", full_checkpoint, "-f", "json").json()
    assert [r["text"] for r in records] == TEXTS and all(r["kind"] == "text" for r in records)
    for record in records:
        stock = contrastive(full_checkpoint, rgb(samples / "cat.jpg"), record["text"]).text_embeds[0]
        assert close(record["embedding"], stock)


def test_cross_embeddings_equal_stock(bt, full_checkpoint, samples):
    images = [samples / "coffee.jpg", samples / "cameraman-gray.png"]
    args = ["--text", TEXTS[0], "--text", TEXTS[1]]
    records = bt("embed", *images, *args, "--kind", "cross", "-m", full_checkpoint, "-f", "json").json()
    assert len(records) == 4
    for record in records:
        stock = contrastive(full_checkpoint, rgb(record["image"]), record["text"]).cross_embeds[0]
        assert close(record["embedding"], stock)


def test_unimodal_embeddings_run_no_cross_modal_layer(full_checkpoint, samples):
    runtime = Runtime(load_model(full_checkpoint, "full", DEVICE, "float32"))
    calls = []
    tower = runtime.tower
    for layer in [*tower.cross_modal_text_layers, *tower.cross_modal_image_layers]:
        layer.register_forward_hook(lambda *args: calls.append(1))
    sources = expand_image_sources([str(samples)])
    assert len(list(pairs.embed(runtime, "image", Outcome(), sources))) == 5
    assert len(list(pairs.embed(runtime, "text", Outcome(), texts=TEXTS))) == 2
    assert calls == []
    list(pairs.embed(runtime, "cross", Outcome(), sources[:1], TEXTS))
    assert calls


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_output_file(bt, full_checkpoint, samples, tmp_path, suffix):
    target = tmp_path / f"out{suffix}"
    result = bt("embed", samples, "-m", full_checkpoint, "-o", target, "-f", "json")
    assert result.code == 0
    assert result.json() == {"output": str(target), "count": 5, "dim": 32, "model": str(full_checkpoint)}
    jsonl = bt("embed", samples, "-m", full_checkpoint, "-f", "jsonl").stdout.splitlines()
    expected = np.array([json.loads(line)["embedding"] for line in jsonl], dtype=np.float32)
    if suffix == ".npy":
        matrix = np.load(target)
    else:
        data = np.load(target)
        matrix = data["embeddings"]
        assert data["ids"].tolist() == [json.loads(line)["image"] for line in jsonl]
        assert str(data["model"]) == str(full_checkpoint)
    assert matrix.dtype == np.float32 and matrix.shape == (5, 32)
    assert np.array_equal(matrix, expected)
    assert list(tmp_path.iterdir()) == [target]


def test_bad_image_in_folder_is_skipped(bt, full_checkpoint, samples, tmp_path):
    for name in ("cat.jpg", "coffee.jpg"):
        (tmp_path / name).write_bytes((samples / name).read_bytes())
    (tmp_path / "zero.png").write_bytes(b"")
    result = bt("embed", tmp_path, "-m", full_checkpoint, "-f", "jsonl")
    assert result.code == 3
    assert len(result.stdout.splitlines()) == 2
    assert "zero.png: empty (0 bytes)" in result.stderr and "1 input(s) skipped" in result.stderr


def test_checkpoint_without_itc_is_refused(bt, checkpoints, samples):
    result = bt("embed", samples / "cat.jpg", "-m", checkpoints["itm_mlm"])
    assert result.code == 1
    assert "no contrastive embedding (ITC) head" in result.stderr and "bridgetower-large-itm-mlm-itc" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "nothing to embed"),
        (["--kind", "cross", "--text", "a cat"], "needs images and texts"),
        (["-o", "out.txt", "--text", "a"], "unknown format"),
    ],
)
def test_usage_problems(bt, full_checkpoint, args, message):
    result = bt("embed", *args, "-m", full_checkpoint)
    assert result.code == 2 and message in result.stderr


def test_csv_of_mixed_kinds(bt, full_checkpoint, samples):
    result = bt("embed", samples / "cat.jpg", "--text", "a cat", "-m", full_checkpoint, "-f", "csv")
    assert result.code == 0, result.stderr
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["image"], r["text"], r["kind"]) for r in rows] == [
        (str(samples / "cat.jpg"), "", "image"),
        ("", "a cat", "text"),
    ]
    assert len(json.loads(rows[0]["embedding"])) == 32
