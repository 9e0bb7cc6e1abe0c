"""The battery: whatever a user throws at bt gets a one-line error with a hint, or a skip with a warning in batch
work, a meaningful exit code, no traceback, and nothing they built is damaged. Every case makes its own files."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from bridgetower_cli import reading


def png(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


def jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def photo(size=(120, 90)) -> Image.Image:
    return Image.open(__import__("conftest").SAMPLES / "coffee.jpg").convert("RGB").resize(size)


def animated_gif() -> bytes:
    frames = [Image.new("P", (60, 40), color) for color in (10, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg(photo((120, 60)), exif=exif)


def palette_with_transparency() -> bytes:
    image = photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return png(image, transparency=0)


# Images a command must read (name -> bytes, file suffix).
GOOD_IMAGES = {
    "CMYK JPEG": (lambda: jpeg(photo().convert("CMYK")), ".jpg"),
    "16-bit PNG": (lambda: png(Image.fromarray(np.asarray(photo().convert("L"), np.uint16) * 257)), ".png"),
    "RGBA PNG": (lambda: png(photo().convert("RGBA")), ".png"),
    "LA PNG": (lambda: png(photo().convert("LA")), ".png"),
    "palette PNG with transparency": (palette_with_transparency, ".png"),
    "animated GIF": (animated_gif, ".gif"),
    "EXIF-rotated JPEG": (exif_rotated, ".jpg"),
    "20:1 panorama": (lambda: jpeg(photo((2000, 100))), ".jpg"),
    "1x1 image": (lambda: png(Image.new("RGB", (1, 1), "red")), ".png"),
}
# Files a command must skip in batch work (name -> bytes, suffix, what stderr says).
BAD_IMAGES = {
    "0-byte file": (lambda: b"", ".jpg", "empty (0 bytes)"),
    "truncated JPEG": (lambda: jpeg(photo())[:600], ".jpg", "damaged image"),
    "text file named .jpg": (lambda: b"just some text\n", ".jpg", "not an image file"),
}


def commands(image, tmp_path) -> dict[str, list]:
    """The command lines that read images, each with ``image`` as its only image source."""
    return {
        "score": ["score", image, "a cup of coffee"],
        "fill-mask": ["fill-mask", image, "a cup of <mask>"],
        "embed": ["embed", image, "-f", "jsonl"],
        "retrieve": ["retrieve", "a cup of coffee", image, "--index", tmp_path / "ix.sqlite", "-r", "2"],
    }


def records_of(result) -> list:
    text = result.stdout.strip()
    return json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines()]


def numbers_in(value) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers_in(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers_in(v)]
    return []


def assert_clean_error(result, code=1):
    assert result.code == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("bt: error: ") and "(hint: " in line


@pytest.mark.parametrize("case", list(GOOD_IMAGES))
@pytest.mark.parametrize("command", ["score", "fill-mask", "embed", "retrieve"])
def test_unusual_images_are_read(bt, full_checkpoint, tmp_path, case, command):
    make, suffix = GOOD_IMAGES[case]
    image = tmp_path / f"input{suffix}"
    image.write_bytes(make())
    result = bt(*commands(image, tmp_path)[command], "-m", full_checkpoint, "-f", "json")
    assert result.code == 0, result.stderr
    records = records_of(result)
    assert records and all(math.isfinite(n) for n in numbers_in(records))
    assert ("padded" in result.stderr) == (case == "20:1 panorama")


def test_the_stock_processor_fails_on_the_panorama(full_checkpoint):
    from transformers import BridgeTowerProcessor

    processor = BridgeTowerProcessor.from_pretrained(full_checkpoint)
    with pytest.raises(ValueError):
        processor(photo((2000, 100)), "a cup", return_tensors="pt")


@pytest.mark.parametrize("case", list(BAD_IMAGES))
@pytest.mark.parametrize("command", ["score", "fill-mask", "embed", "retrieve"])
def test_bad_image_in_a_batch_is_skipped(bt, full_checkpoint, samples, tmp_path, case, command):
    make, suffix, message = BAD_IMAGES[case]
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / f"bad{suffix}").write_bytes(make())
    shutil.copy(samples / "cat.jpg", folder / "cat.jpg")
    result = bt(*commands(folder, tmp_path)[command], "-m", full_checkpoint, "-f", "json")
    assert result.code == 3, result.stderr
    assert {r.get("image") for r in records_of(result)} == {str(folder / "cat.jpg")}
    assert f"skipped: {folder / f'bad{suffix}'}: {message}" in result.stderr
    assert result.stderr.count(f"bad{suffix}") == 1  # each skipped file is reported once
    assert "1 input(s) skipped" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["score", "fill-mask", "embed", "retrieve"])
def test_only_a_bad_image_is_an_error(bt, full_checkpoint, tmp_path, command):
    image = tmp_path / "bad.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    result = bt(*commands(image, tmp_path)[command], "-m", full_checkpoint)
    assert result.code == 1 and "Traceback" not in result.stderr
    assert "bt: error: none of the images could be" in result.stderr


@pytest.mark.parametrize("command", ["score", "fill-mask", "embed", "retrieve"])
@pytest.mark.parametrize("case", ["missing file", "directory with no images", "ftp URL", "file URL"])
def test_bad_sources_are_one_line_errors(bt, full_checkpoint, tmp_path, command, case):
    (tmp_path / "empty").mkdir()
    source = {
        "missing file": tmp_path / "missing.jpg",
        "directory with no images": tmp_path / "empty",
        "ftp URL": "ftp://example.com/cat.jpg",
        "file URL": "file:///etc/passwd",
    }[case]
    assert_clean_error(bt(*commands(source, tmp_path)[command], "-m", full_checkpoint))


def test_decompression_bomb(bt, full_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("BT_MAX_IMAGE_PIXELS", "1000")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png(Image.new("RGB", (100, 100))))
    result = bt("score", bomb, "a cat", "-m", full_checkpoint)
    assert result.code == 1 and "too large to decode safely" in result.stderr


@pytest.mark.parametrize(
    "path, message",
    [
        ("/missing.jpg", "HTTP 404"),
        ("/page.html", "not an image (Content-Type text/html)"),
        ("/huge.jpg", "larger than"),
        ("/stream.jpg", "larger than"),
        ("/silent.jpg", "no answer within"),
    ],
)
def test_bad_urls_are_skipped(bt, full_checkpoint, server, monkeypatch, path, message):
    monkeypatch.setattr(reading, "URL_TIMEOUT_S", (2.0, 1.0))
    monkeypatch.setattr(reading, "URL_MAX_BYTES", 512 * 1024)
    start = time.monotonic()
    result = bt("score", server + path, server + "/cat.jpg", "a cat", "-m", full_checkpoint, "-f", "json")
    assert time.monotonic() - start < 20
    assert result.code == 3, result.stderr
    assert [r["image"] for r in result.json()] == [server + "/cat.jpg"]
    assert message in result.stderr


TEXT_COMMANDS = {
    "score": lambda samples, text, tmp: ["score", samples / "cat.jpg", text],
    "fill-mask": lambda samples, text, tmp: ["fill-mask", samples / "cat.jpg", f"<mask> {text}"],
    "embed": lambda samples, text, tmp: ["embed", "--text", text],
    "retrieve": lambda samples, text, tmp: ["retrieve", text, samples, "--index", tmp / "ix.sqlite", "-r", "1"],
}


@pytest.mark.parametrize("command", list(TEXT_COMMANDS))
@pytest.mark.parametrize("text", ["", "   \t "])
def test_empty_texts_are_refused(bt, full_checkpoint, samples, tmp_path, command, text):
    args = TEXT_COMMANDS[command](samples, text, tmp_path)
    if command == "fill-mask":
        args[-1] = text
    result = bt(*args, "-m", full_checkpoint)
    assert result.code == 1 and "text 1 is empty" in result.stderr


@pytest.mark.parametrize("command", list(TEXT_COMMANDS))
def test_long_text_is_truncated_with_a_warning(bt, full_checkpoint, samples, tmp_path, command):
    text = " ".join(["a cat sitting on a couch near the window"] * 250)  # 2000 words
    result = bt(*TEXT_COMMANDS[command](samples, text, tmp_path), "-m", full_checkpoint, "-f", "json")
    assert result.code == 0, result.stderr
    assert "truncated to 512 tokens" in result.stderr
    assert records_of(result)


@pytest.mark.parametrize("command", list(TEXT_COMMANDS))
def test_emoji_and_non_latin_scripts(bt, full_checkpoint, samples, tmp_path, command):
    text = "🐱 猫がソファに座っている — кошка на диване"
    result = bt(*TEXT_COMMANDS[command](samples, text, tmp_path), "-m", full_checkpoint, "-f", "json")
    assert result.code == 0, result.stderr
    records = records_of(result)
    assert records
    if command != "retrieve":  # retrieve's records name the images found, not the query
        assert text in json.dumps(records, ensure_ascii=False)


@pytest.mark.parametrize("command", ["score", "fill-mask", "embed", "retrieve"])
def test_model_errors(bt, tmp_path, samples, command):
    args = commands(samples / "cat.jpg", tmp_path)[command]
    not_a_checkpoint = tmp_path / "empty-dir"
    not_a_checkpoint.mkdir()
    assert "no config.json" in bt(*args, "-m", not_a_checkpoint).stderr
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    result = bt(*args, "-m", other)
    assert_clean_error(result)
    assert "not BridgeTower" in result.stderr or "not a BridgeTower checkpoint" in result.stderr
    assert_clean_error(bt(*args, "-m", tmp_path / "no-such-dir"))


def test_missing_heads_for_every_command(bt, checkpoints, tmp_path, samples):
    backbone = checkpoints["backbone"]
    for command, args in commands(samples / "cat.jpg", tmp_path).items():
        result = bt(*args, "-m", backbone)
        assert_clean_error(result)
        assert "head" in result.stderr and "--model BridgeTower/" in result.stderr, command


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["fill-mask", "embed", "retrieve"])
def test_unknown_hub_id_without_network_fails_fast(tmp_path, samples, command):
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_OFFLINE", None)
    args = [str(a) for a in commands(samples / "cat.jpg", tmp_path)[command]]
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bridgetower_cli", *args, "-m", "someone/no-such-model"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert time.monotonic() - start < 10
    assert result.returncode == 1 and "cannot be reached" in result.stderr and "Traceback" not in result.stderr


def test_index_on_an_unwritable_path(bt, full_checkpoint, samples):
    result = bt("retrieve", "a cat", samples, "-m", full_checkpoint, "--index", "/proc/bt/index.sqlite")
    assert_clean_error(result)
    assert "index" in result.stderr and "writable" in result.stderr


def test_corrupt_index_is_left_alone(bt, full_checkpoint, samples, tmp_path):
    index = tmp_path / "ix.sqlite"
    garbage = os.urandom(8192)
    index.write_bytes(garbage)
    assert_clean_error(bt("index", samples, "-m", full_checkpoint, "--index", index))
    assert index.read_bytes() == garbage


def test_quiet_silences_warnings(bt, full_checkpoint, tmp_path):
    panorama = tmp_path / "wide.jpg"
    panorama.write_bytes(jpeg(photo((2000, 100))))
    assert "padded" in bt("score", panorama, "a cup", "-m", full_checkpoint).stderr
    assert bt("score", panorama, "a cup", "-m", full_checkpoint, "-q").stderr == ""


# An SGR sequence that sets a colour (foreground or background, 8, 16, 256 or true colour).
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|4[0-9]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")


def test_no_color(bt, full_checkpoint, tmp_path):
    panorama = tmp_path / "wide.jpg"
    panorama.write_bytes(jpeg(photo((2000, 100))))
    args = ("score", panorama, "a cup", "-m", full_checkpoint, "-f", "table")
    coloured = bt(*args, env={"FORCE_COLOR": "1"})  # as on a terminal: the bars green, "warning:" yellow
    assert COLOUR.search(coloured.stdout) and COLOUR.search(coloured.stderr)
    plain = bt(*args, env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert plain.code == 0 and "a cup" in plain.stdout and "padded" in plain.stderr
    assert not COLOUR.search(plain.stdout) and not COLOUR.search(plain.stderr)


def test_index_stays_valid_after_a_failed_query(bt, full_checkpoint, samples, tmp_path):
    """A query whose refresh fails inside a write transaction (SQLite itself refuses a row) leaves the index as it
    was: the batch in flight rolled back, nothing half-written, no lock held."""
    index = tmp_path / "ix.sqlite"
    assert bt("index", samples, "-m", full_checkpoint, "--index", index).code == 0
    with sqlite3.connect(index) as db:
        before = sorted(db.execute("SELECT path, hash, slot FROM images"))
        db.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON images WHEN NEW.path LIKE '%zz-poison.jpg' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
        )
    folder = tmp_path / "more"
    shutil.copytree(samples, folder, ignore=shutil.ignore_patterns("*.md"))
    shutil.copy(samples / "cat.jpg", folder / "zz-poison.jpg")  # sorted last: the batch's other rows go in first
    result = bt("retrieve", "a cat", folder, "-m", full_checkpoint, "--index", index, "-b", "8")
    assert result.code == 1 and "poisoned row" in result.stderr and "Traceback" not in result.stderr
    with sqlite3.connect(index, timeout=0) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert sorted(db.execute("SELECT path, hash, slot FROM images")) == before
        db.execute("BEGIN IMMEDIATE")  # no writer left holding the lock
        db.rollback()
