"""Heat-map pictures for ``bt explain``, drawn as LAVIS's ``getAttMap`` draws them: the map min-max normalised,
upsampled to the image (bicubic), a light Gaussian blur, a colour map (perceptually uniform ``viridis`` by
default, from the ``cmap`` package), blended over the photo with weight ``map ** 0.7``. The map covers the square
the BridgeTower processor crops; what the model never saw is dimmed."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

DEFAULT_COLORMAP = "viridis"


def seen_box(size: tuple[int, int], side: int) -> tuple[int, int, int, int]:
    """The region of a (width, height) image that the processor keeps, in the image's pixels: the shortest edge
    resized to ``side`` (the longest capped at 1333/800 of it, both rounded down to multiples of 32), then the
    centre ``side`` x ``side`` crop (padded where the resized image is smaller)."""
    from transformers.models.bridgetower.image_processing_pil_bridgetower import get_resize_output_image_size

    width, height = size
    header = np.broadcast_to(np.zeros((), np.uint8), (1, height, width))  # shape only, no pixels
    new_height, new_width = get_resize_output_image_size(header, side, int(1333 / 800 * side), 32)
    top, left = (new_height - side) // 2, (new_width - side) // 2
    sx, sy = width / new_width, height / new_height
    return round(left * sx), round(top * sy), round((left + side) * sx), round((top + side) * sy)


def _normalised(values: np.ndarray) -> np.ndarray:
    values = values - values.min()
    peak = values.max()
    return values / peak if peak > 0 else values


def overlay(
    image: Image.Image, grid: list[list[float]], side: int, caption: str = "", colormap: str = DEFAULT_COLORMAP
) -> Image.Image:
    """The map over the photo, at the photo's size, with ``caption`` written along its bottom edge."""
    from cmap import Colormap

    photo = np.asarray(image.convert("RGB"), dtype=np.float64)
    height, width = photo.shape[:2]
    left, top, right, bottom = seen_box((width, height), side)
    cam = Image.fromarray(_normalised(np.asarray(grid, dtype=np.float32)), mode="F")
    cam = cam.resize((max(1, right - left), max(1, bottom - top)), Image.Resampling.BICUBIC)
    canvas = Image.new("F", (width, height), 0.0)
    canvas.paste(cam, (left, top))
    levels = Image.fromarray(np.clip(np.asarray(canvas) * 255, 0, 255).astype(np.uint8), mode="L")
    blurred = levels.filter(ImageFilter.GaussianBlur(0.02 * max(width, height)))
    heat = _normalised(np.asarray(blurred, dtype=np.float64))
    colours = Colormap(colormap).lut(256)[:, :3] * 255
    weight = heat[..., None] ** 0.7
    blended = (1 - weight) * photo + weight * colours[np.round(heat * 255).astype(int)]
    seen = np.zeros((height, width, 1))
    seen[max(0, top) : max(0, bottom), max(0, left) : max(0, right)] = 1
    blended = seen * blended + (1 - seen) * photo * 0.35
    picture = Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
    if caption:
        _write_caption(picture, caption)
    return picture


def _write_caption(picture: Image.Image, caption: str) -> None:
    size = max(10, picture.height // 24)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(picture, "RGBA")
    box = draw.textbbox((0, 0), caption, font=font)
    strip = box[3] - box[1] + size // 2
    draw.rectangle((0, picture.height - strip, picture.width, picture.height), fill=(0, 0, 0, 170))
    draw.text((size // 3, picture.height - strip + size // 6 - box[1]), caption, fill=(255, 255, 255), font=font)


def panels(pictures: list[Image.Image], height: int = 320) -> Image.Image:
    """Pictures side by side at one height (``--words``: the text's map, then one per word)."""
    scaled = [
        p.resize((max(1, round(p.width * height / p.height)), height), Image.Resampling.LANCZOS) for p in pictures
    ]
    sheet = Image.new("RGB", (sum(p.width for p in scaled) + 4 * (len(scaled) - 1), height), "white")
    x = 0
    for picture in scaled:
        sheet.paste(picture, (x, 0))
        x += picture.width + 4
    return sheet


def explained_picture(image: Image.Image, record, side: int, words: bool = False) -> Image.Image:
    """An ``ExplainRecord``'s picture: the text's map over the photo, captioned; with ``words``, then a panel per
    token."""
    caption = f"{record.text} | match {record.probability:.3f} | layer {record.layer}"
    picture = overlay(image, record.grid, side, caption)
    if words:
        picture = panels([picture, *(overlay(image, token.grid, side, token.token) for token in record.tokens)])
    return picture


def model_view(source, side: int, longest: int | None = None) -> Image.Image:
    """The image of ``source`` as the model saw it (decoded, and padded where too thin), for drawing its map over;
    with ``longest``, at most that many pixels wide or high (a JPEG read at the reduced scale that allows)."""
    from .images import decode_image, fit_aspect
    from .reading import read_bytes

    image = fit_aspect(decode_image(read_bytes(source), short_side=longest), side)[0]
    if longest:
        image.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    return image
