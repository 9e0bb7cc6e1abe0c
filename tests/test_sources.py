"""Image and text sources: expansion, decoding every mode to RGB, EXIF orientation, URLs on a local server."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bridgetower_cli.errors import BtError, InputError
from bridgetower_cli.images import decode_image
from bridgetower_cli.reading import load_image
from bridgetower_cli.sources import expand_image_sources, read_texts, split_arguments


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
    decoded = decode_image(encode(image, fmt))
    assert decoded.mode == "RGB" and decoded.size == (40, 30)


def test_sixteen_bit_is_scaled_not_clipped():
    array = np.full((8, 8), 32768, dtype=np.uint16)
    decoded = decode_image(encode(Image.fromarray(array), "PNG"))
    assert abs(int(np.asarray(decoded)[0, 0, 0]) - 128) <= 1


def test_transparency_is_composited_on_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(decode_image(encode(image, "PNG")))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    assert decode_image(encode(image, "JPEG", exif=exif)).size == (20, 40)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", r"empty \(0 bytes\)"),
        (b"plain text", "not an image file"),
        (b"\xff\xd8\xff\xe0junk", "damaged|not an image"),
    ],
)
def test_bad_bytes_raise_input_error(data, message):
    with pytest.raises(InputError, match=message):
        decode_image(data)


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


def test_a_jpeg_over_the_pixel_limit_is_read_at_a_reduced_scale():
    photo = Image.linear_gradient("L").resize((400, 300)).convert("RGB")
    data = encode(photo, "JPEG")
    assert decode_image(data, max_pixels=400 * 300).size == (400, 300)  # at the limit: read whole
    assert decode_image(data, max_pixels=400 * 300 - 1).size == (200, 150)  # 1/2 scale
    assert decode_image(data, max_pixels=2000).size == (50, 38)  # 1/8 scale
    with pytest.raises(InputError, match="too large to decode safely"):
        decode_image(data, max_pixels=1000)  # even 1/8 is over: a bomb


def test_a_png_over_the_pixel_limit_is_refused(monkeypatch):
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    monkeypatch.setenv("BT_MAX_IMAGE_PIXELS", "9999")
    with pytest.raises(InputError, match="too large to decode safely .*BT_MAX_IMAGE_PIXELS"):
        decode_image(data)
    monkeypatch.setenv("BT_MAX_IMAGE_PIXELS", "10000")
    assert decode_image(data).size == (100, 100)


@pytest.mark.parametrize(
    "items, images, texts",
    [
        (["{cat}", "a cat", "{rocket}"], ["{cat}", "{rocket}"], ["a cat"]),
        (["a cat", "{cat}"], ["{cat}"], ["a cat"]),
        (["{samples}", "two cats on/off a couch", "cat"], ["{samples}"], ["two cats on/off a couch", "cat"]),
        (["-", "http://example.com/x.jpg", "what?"], ["-", "http://example.com/x.jpg"], ["what?"]),
        (["{samples}/*.jpg", "a photo"], ["{samples}/*.jpg"], ["a photo"]),
    ],
)
def test_arguments_are_split_by_what_they_name(samples, items, images, texts):
    def fill(values):
        return [v.format(cat=samples / "cat.jpg", rocket=samples / "rocket.jpg", samples=samples) for v in values]

    assert split_arguments(fill(items)) == (fill(images), fill(texts))


@pytest.mark.parametrize(
    "item, message",
    [
        ("photos/typo/", "no such file or directory: photos/typo/"),
        ("cat.jgp", "no such file or directory: cat.jgp"),
        ("nowhere/*.jpg", "no image files match nowhere/*.jpg"),
        ("{captions}", "is a text file, not an image"),
    ],
)
def test_a_missing_path_or_a_text_file_is_never_a_caption(tmp_path, item, message):
    captions = tmp_path / "captions.txt"
    captions.write_text("a cat\n")
    with pytest.raises(BtError, match=message.replace("*", "\\*")) as error:
        split_arguments([item.format(captions=captions), "a cat"])
    assert "-t " in error.value.hint


def test_repeated_texts_count_once(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a cat\na dog\na cat\n")
    assert read_texts(["a dog"], str(path)) == ["a dog", "a cat"]
