"""Fast decoding (--fast-decode): large JPEGs read at the reduced scale that still covers the model's input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bridgetower_cli.autoserver import ServerOptions
from bridgetower_cli.images import decode_image


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def large_photo(samples) -> Image.Image:
    """A 2400x1800 photograph (the sample cat, enlarged)."""
    return Image.open(samples / "cat.jpg").convert("RGB").resize((2400, 1800), Image.Resampling.BICUBIC)


def test_large_jpegs_decode_at_the_largest_scale_that_covers_the_input(large_photo):
    data = encoded(large_photo, "JPEG")
    assert decode_image(data).size == (2400, 1800)
    assert decode_image(data, short_side=288).size == (600, 450)  # 1/4: 450 >= 288, while 1/8 would give 225
    assert decode_image(data, short_side=450).size == (600, 450)
    assert decode_image(data, short_side=451).size == (1200, 900)
    assert decode_image(data, short_side=2000).size == (2400, 1800)


def test_only_jpegs_are_read_at_a_reduced_scale(large_photo):
    assert decode_image(encoded(large_photo, "PNG"), short_side=288).size == (2400, 1800)


def test_fast_decoding_keeps_the_orientation(large_photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: shown 90 degrees clockwise
    buffer = io.BytesIO()
    large_photo.save(buffer, "JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), short_side=288).size == (450, 600)


def test_fast_decode_changes_the_numbers_of_large_jpegs_only_slightly(bt, full_checkpoint, large_photo, tmp_path):
    photo = tmp_path / "large.jpg"
    photo.write_bytes(encoded(large_photo, "JPEG"))
    embed = ["embed", "--kind", "image", photo, "-m", full_checkpoint, "-f", "json"]
    full, fast = bt(*embed).json()[0]["embedding"], bt(*embed, "--fast-decode").json()[0]["embedding"]
    cosine = float(np.dot(full, fast) / np.linalg.norm(full) / np.linalg.norm(fast))
    assert full != fast and cosine >= 0.99


def test_the_automatic_server_decodes_as_asked():
    plain, fast = ServerOptions(), ServerOptions(fast_decode=True)
    socket = Path("bt.sock")
    assert "--fast-decode" in fast.arguments(socket) and "--fast-decode" not in plain.arguments(socket)
    assert plain.identity() != fast.identity()


def test_a_bad_decode_thread_count_is_said_before_any_model_loads(bt, samples, tmp_path):
    result = bt("embed", samples / "cat.jpg", "-m", tmp_path / "no-such-model", env={"BT_DECODE_WORKERS": "0"})
    assert result.code == 2 and "BT_DECODE_WORKERS=0" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
