"""Every command through the fake model (conftest's FakeBackend): parsing, rendering in every format, exit codes,
skips and streaming, in milliseconds. The numbers themselves are checked against transformers elsewhere."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from bridgetower_cli.operations.table import DEFAULT_MODELS


@pytest.fixture
def photos(samples, tmp_path):
    import shutil

    folder = tmp_path / "photos"
    shutil.copytree(samples, folder, ignore=shutil.ignore_patterns("*.md", "*.json"))
    return folder


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "table", "html"])
def test_score_in_every_format(bt, fake, photos, fmt):
    result = bt("score", photos, "a cat", "a dog", "-f", fmt, env={"COLUMNS": "160"})
    assert result.code == 0, result.stderr
    if fmt == "json":
        records = result.json()
        assert len(records) == 10 and set(records[0]) == {"image", "text", "logit", "probability"}
        for image in {r["image"] for r in records}:  # per image, the best probability first
            mine = [r["probability"] for r in records if r["image"] == image]
            assert mine == sorted(mine, reverse=True)
    elif fmt == "jsonl":
        assert len([json.loads(line) for line in result.stdout.splitlines()]) == 10
    elif fmt == "csv":
        assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == 10
    elif fmt == "table":
        assert "probability" in result.stdout and "a cat" in result.stdout
    else:
        assert result.stdout.startswith("<!doctype html>") and result.stdout.count('class="card"') == 5


def test_score_top_k_skips_and_exit_codes(bt, fake, photos):
    (photos / "broken.jpg").write_bytes(b"x")
    result = bt("score", photos, "a cat", "a dog", "-k", "1", "-f", "json")
    assert result.code == 3 and len(result.json()) == 5 and result.stderr.count("broken.jpg") == 1
    only_broken = bt("score", photos / "broken.jpg", "a cat")
    assert only_broken.code == 1 and "none of the images could be read" in only_broken.stderr


def test_streamed_formats_write_each_record_as_it_comes(bt, fake, photos, monkeypatch):
    import bridgetower_cli.cli.render as render

    seen = []
    real = render.write_jsonl

    def spying(records, stream):
        for record in records:
            seen.append(fake[-1].produced)  # how many records the backend had made when this one was written
            real([record], stream)

    monkeypatch.setattr(render, "write_jsonl", spying)
    assert bt("score", photos, "a cat", "-f", "jsonl").code == 0
    assert seen == [1, 2, 3, 4, 5]  # each written as soon as it was made, not after all


def test_fill_mask(bt, fake, photos):
    result = bt("fill-mask", photos / "cat.jpg", "a <mask> on a <mask>", "-k", "3", "-f", "json")
    (record,) = result.json()
    assert [len(m) for m in record["masks"]] == [3, 3] and record["sequence"] == "a word0 on a word0"


def test_embed_to_stdout_and_to_files(bt, fake, photos, tmp_path):
    images = bt("embed", photos, "-f", "json").json()
    assert len(images) == 5 and all(r["kind"] == "image" and r["dim"] == 4 for r in images)
    cross = bt("embed", photos / "cat.jpg", "-t", "a", "-t", "b", "--kind", "cross", "-f", "json").json()
    assert [r["text"] for r in cross] == ["a", "b"]
    written = bt("embed", photos, "-t", "a cat", "--output", tmp_path / "e.npz", "-f", "json").json()
    assert written["count"] == 6
    saved = np.load(tmp_path / "e.npz")
    assert saved["embeddings"].shape == (6, 4) and list(saved["kinds"]).count("text") == 1


def test_retrieve_text_image_like_and_paths(bt, fake, photos, tmp_path):
    index = ["--index", tmp_path / "ix.sqlite"]
    hits = bt("retrieve", "a cat", photos, *index, "-k", "3", "-f", "json").json()
    assert [h["rank"] for h in hits] == [1, 2, 3]
    texts = bt("retrieve", "--image", photos / "cat.jpg", "-t", "a", "-t", "b", "-f", "json").json()
    assert sorted(h["text"] for h in texts) == ["a", "b"]
    like = bt("retrieve", photos / "cat.jpg", photos, *index, "-f", "json")
    assert like.code == 0 and fake[-1].calls[-1][1].query.name == str(photos / "cat.jpg")
    whole = bt("retrieve", "a rocket", "-n", *index, "-f", "json").json()
    assert [h["image"] for h in whole] and fake[-1].calls[-1][1].specs == []
    paths = bt("retrieve", "a cat", photos, *index, "-f", "paths", "-0").stdout
    assert paths.count("\0") == 5 and "\n" not in paths
    assert not fake[-1].calls[-1][1].exact
    assert bt("retrieve", "a cat", "-n", *index, "--exact", "-f", "json").code == 0 and fake[-1].calls[-1][1].exact
    assert bt("index", photos, *index, "--tier-from", "5000", "-f", "json").code == 0
    assert fake[-1].calls[-1][1].tier_from == 5000
    refused = bt("index", photos, *index, "--tier-from", "-1")
    assert refused.code == 2 and "tier-from must be a whole number of 0 or more" in refused.stderr


def test_index_and_eval(bt, fake, photos, samples, tmp_path):
    stats = bt("index", photos, "--index", tmp_path / "ix.sqlite", "-f", "json").json()
    assert stats[0]["new"] == 5
    record = bt("eval", samples / "captions.json", "-f", "json").json()
    assert record["protocol"] == "fake" and record["images"] == 5
    table = bt("eval", samples / "captions.json", "-f", "table", env={"COLUMNS": "100"}).stdout
    assert "txt_r1" in table and "20.00" in table


def test_explain_numbers_and_pictures(bt, fake, photos, tmp_path):
    (record,) = bt("explain", photos / "cat.jpg", "a cat", "-f", "json").json()
    assert len(record["grid"]) == 4 and record["tokens"][0]["token"] == "w"
    out = tmp_path / "maps"
    records = bt(
        "explain", photos / "cat.jpg", photos / "coffee.jpg", "a cat", "--output-dir", out, "--words", "-f", "json"
    )
    assert records.code == 0 and sorted(p.name for p in out.iterdir()) == ["cat--a-cat.png", "coffee--a-cat.png"]


def test_models_and_usage_errors(bt, fake):
    models = bt("models", "-f", "json").json()
    assert len(models) == 4
    defaults = [command for m in models for command in m["default_for"]]  # each command's default, named once
    assert sorted(defaults) == sorted(DEFAULT_MODELS) and {"score", "embed"} <= set(defaults)
    for args in (["score"], ["score", "x.jpg", "a", "-f", "xml"], ["retrieve", "a cat", "-k", "0"]):
        result = bt(*args)
        assert result.code == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith("bt: error:"), args


def _command_lines(photos, tmp_path) -> dict[str, list[str]]:
    """A working command line of each model command (the fake model answers them)."""
    (tmp_path / "eval.json").write_text(json.dumps([{"image": str(photos / "cat.jpg"), "caption": ["a cat"]}]))
    return {
        "score": ["score", str(photos / "cat.jpg"), "a cat"],
        "fill-mask": ["fill-mask", str(photos / "cat.jpg"), "a <mask>"],
        "embed": ["embed", "-t", "a cat"],
        "retrieve": ["retrieve", "a cat", str(photos)],
        "index": ["index", str(photos), "--index", str(tmp_path / "ix.sqlite")],
        "explain": ["explain", str(photos / "cat.jpg"), "a cat"],
        "classify": ["classify", str(photos / "cat.jpg"), "-l", "cat,dog"],
        "eval": ["eval", str(tmp_path / "eval.json")],
    }


def test_every_format_is_checked_against_the_table_before_anything_runs(bt, fake, photos, tmp_path):
    """Each model command writes exactly the formats its entry lists: the others are a usage error before a backend
    is even made (``bt index -f paths`` indexed everything, then died); the listed ones work."""
    from bridgetower_cli.operations import FORMATS

    every = ("table", "json", "jsonl", "csv", "paths", "html")
    for command, line in _command_lines(photos, tmp_path).items():
        assert set(FORMATS[command]) <= set(every)
        for fmt in every:
            made = len(fake)
            result = bt(*line, "-f", fmt, env={"COLUMNS": "160"})
            if fmt in FORMATS[command]:
                assert result.code == 0, (command, fmt, result.stderr)
                continue
            assert result.code == 2 and result.stdout == "", (command, fmt)
            assert result.stderr == (
                f"bt: error: -f {fmt} is not a format of bt {command} "
                f"(hint: use one of: auto, {', '.join(FORMATS[command])})\n"
            )
            assert len(fake) == made, (command, fmt)  # (refused before a backend was made)
    assert "paths" not in FORMATS["index"] and "html" not in FORMATS["embed"] and "paths" not in FORMATS["classify"]


def test_the_fake_model_answers_every_operation_of_the_table():
    """The fast layer's fake is a Backend with a method for every operation, so no command escapes it."""
    from conftest import FakeBackend

    from bridgetower_cli.backend import Backend
    from bridgetower_cli.operations import OPERATIONS

    assert issubclass(FakeBackend, Backend)
    assert [op.name for op in OPERATIONS.values() if not callable(getattr(FakeBackend, op.name, None))] == []


def test_index_check_through_the_fake(bt, fake, photos, tmp_path):
    index = tmp_path / "ix.sqlite"
    assert bt("index", photos, "--index", index).code == 0  # (the fake's refresh writes nothing)
    result = bt("index", "--check", "--index", index)
    assert result.code == 1 and f"no index at {index}" in result.stderr
