"""Image and text sources: expansion, decoding every mode to RGB, EXIF orientation, URLs on a local server."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bridgetower_cli.errors import BtError, InputError
from bridgetower_cli.inputs import decode_image, expand_image_sources, load_image, read_texts


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_directory_walk_keeps_image_files_only(tmp_path, samples):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for target in ("a.jpg", "sub/b.PNG", ".hidden/c.jpg"):
        (tmp_path / target).write_bytes((samples / "cat.jpg").read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    names = [s.name for s in expand_image_sources([str(tmp_path)])]
    assert names == [str(tmp_path / "a.jpg"), str(tmp_path / "sub" / "b.PNG")]


def test_sources_are_deduplicated_in_order(samples):
    cat, coffee = str(samples / "cat.jpg"), str(samples / "coffee.jpg")
    assert [s.name for s in expand_image_sources([coffee, cat, coffee])] == [coffee, cat]


@pytest.mark.parametrize("spec, message", [("ftp://x/y.jpg", "unsupported URL scheme"), ("nope/*.jpg", "no image")])
def test_bad_specs(spec, message):
    with pytest.raises(BtError, match=message):
        expand_image_sources([spec])


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    base = Image.linear_gradient("L").resize((40, 30))
    image = base.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(base, np.uint16) * 257)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = decode_image(encode(image, fmt), f"x.{fmt.lower()}")
    assert decoded.mode == "RGB" and decoded.size == (40, 30)


def test_sixteen_bit_is_scaled_not_clipped():
    array = np.full((8, 8), 32768, dtype=np.uint16)
    decoded = decode_image(encode(Image.fromarray(array), "PNG"), "x.png")
    assert abs(int(np.asarray(decoded)[0, 0, 0]) - 128) <= 1


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(decode_image(encode(image, "PNG"), "x.png"))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    assert decode_image(encode(image, "JPEG", exif=exif), "x.jpg").size == (20, 40)


@pytest.mark.parametrize(
    "data, message",
    [(b"", "is empty"), (b"plain text", "not an image file"), (b"\xff\xd8\xff\xe0junk", "damaged|not an image")],
)
def test_bad_bytes_raise_input_error(data, message):
    with pytest.raises(InputError, match=message):
        decode_image(data, "x.jpg")


def test_texts_from_file_and_stdin(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one\n\n two \n", encoding="utf-8")
    assert read_texts(["zero"], str(path)) == ["zero", "one", "two"]
    assert read_texts([], "-", stdin=io.StringIO("a\nb\n")) == ["a", "b"]
    with pytest.raises(BtError, match="no texts"):
        read_texts([], None)


def test_url_sources(server):
    (source,) = expand_image_sources([f"{server}/cat.jpg"])
    assert load_image(source).size == (451, 300)
    with pytest.raises(InputError, match="HTTP 404"):
        load_image(expand_image_sources([f"{server}/missing.jpg"])[0])
    with pytest.raises(InputError, match="not an image"):
        load_image(expand_image_sources([f"{server}/page.html"])[0])
