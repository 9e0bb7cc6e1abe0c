"""Decoding images with bounds: pixels per image (``BT_MAX_IMAGE_PIXELS``; JPEGs over it decode at a reduced scale),
pixels decoding at once in this process (a server's decode budget), and every mode made RGB without large copies."""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import threading
from collections.abc import Iterator

from .errors import Busy, InputError, UsageError

# Decoded images above this many pixels are refused (env BT_MAX_IMAGE_PIXELS): Pillow's own bomb limit. A larger JPEG
# is decoded at 1/2, 1/4 or 1/8 scale (JPEG draft mode) to fit under it: a 108-megapixel phone photo is read at
# 27 megapixels, still far above what the model sees, with a quarter of the memory.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


def max_image_pixels() -> int:
    value = os.environ.get("BT_MAX_IMAGE_PIXELS", "")
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise UsageError(
            f"BT_MAX_IMAGE_PIXELS={value} is not a positive whole number", "e.g. BT_MAX_IMAGE_PIXELS=200000000"
        )
    return int(value)


def decode_workers() -> int:
    """Threads decoding images ahead of the model: ``BT_DECODE_WORKERS``, else one per core up to four."""
    value = os.environ.get("BT_DECODE_WORKERS", "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise UsageError(f"BT_DECODE_WORKERS={value} is not a positive whole number", "e.g. BT_DECODE_WORKERS=2")
        return int(value)
    return min(4, os.cpu_count() or 1)


# The formats bt decodes: photographs and the common lossless ones. Pillow's other plugins (ICO, BLP, ...) decode
# whole images while merely opening them, before any limit can apply; they are never tried.
FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "AVIF", "HEIF")


@functools.cache
def heif_registered() -> bool:
    """HEIF (iPhone photos) through pillow-heif, the [heif] extra, registered with Pillow once if installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _open(data: bytes):
    """The image's header, parsed (no pixels decoded yet)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError("empty (0 bytes)")
    Image.MAX_IMAGE_PIXELS = None  # bt applies its own limit, after any reduced-scale decoding
    Image.init()  # (every plugin registered, so that each format named is known)
    heif_registered()
    try:
        return Image.open(io.BytesIO(data), formats=[name for name in FORMATS if name in Image.OPEN])
    except UnidentifiedImageError:
        raise InputError("not an image file bt can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InputError(f"damaged image ({error})") from None


def _scale(image, limit: int) -> int:
    """1 when the image fits the limit, else the JPEG reduction (2, 4, 8) that makes it fit; refuse otherwise."""
    width, height = image.size
    if width * height <= limit:
        return 1
    scale = next((s for s in (2, 4, 8) if image.format == "JPEG" and width * height <= limit * s * s), None)
    if scale is None:
        raise InputError(
            f"too large to decode safely ({width}x{height} pixels, over {limit}; BT_MAX_IMAGE_PIXELS raises it)"
        )
    return scale


EXIF_DATE_TAGS = ((0x8769, 36867), (0x8769, 36868), (None, 306))  # DateTimeOriginal, DateTimeDigitized, DateTime


def taken_at(data: bytes) -> int | None:
    """When a photo was taken, as its EXIF says (the camera's clock, read as UTC: seconds since 1970), from the header
    alone; None when it does not say, or says something that is not a date."""
    import calendar
    import time

    try:
        exif = _open(data).getexif()
        for ifd, tag in EXIF_DATE_TAGS:
            value = (exif.get_ifd(ifd) if ifd else exif).get(tag)
            if isinstance(value, str) and value.strip("\x00 ").strip():
                return calendar.timegm(time.strptime(value.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S"))
    except (InputError, OSError, SyntaxError, ValueError, EOFError, OverflowError):
        pass  # (no date, or a damaged one: the photo is still indexed, and browsed by its modification time)
    return None


BUDGETED_PIXEL_BYTES = 14  # what decoding and preprocessing hold per decoded pixel, measured: the budget's unit


def decoded_pixels(data: bytes, max_pixels: int | None = None) -> int:
    """How many pixels decoding ``data`` costs (after any reduced-scale JPEG decoding), from the header alone; refuses
    what ``decode_image`` would refuse. A progressive JPEG also holds its whole-image DCT coefficients while it
    decodes (libjpeg's buffer, at full resolution whatever the scale): charged as the pixels that many bytes are."""
    image = _open(data)
    scale = _scale(image, max_pixels or max_image_pixels())
    width, height = image.size
    pixels = -(-width // scale) * -(-height // scale)
    if image.format == "JPEG" and image.info.get("progressive"):
        pixels += -(-_coefficient_bytes(image) // BUDGETED_PIXEL_BYTES)
    return pixels


def _coefficient_bytes(image) -> int:
    """A JPEG's DCT coefficients, all components at full resolution: 64 of 2 bytes per 8x8 block of each component
    (sampled by its factors; a component without them counted at full resolution)."""
    width, height = image.size
    layers = getattr(image, "layer", None) or [(0, 1, 1, 0)] * len(image.getbands())
    h_max, v_max = max(layer[1] for layer in layers), max(layer[2] for layer in layers)
    blocks = sum(
        math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(math.ceil(height * v / v_max) / 8)
        for _, h, v, *_ in layers
    )
    return blocks * 64 * 2


def _reduction(image, short_side: int) -> int:
    """The largest JPEG reduction (1, 2, 4, 8) that keeps the image's short side at least ``short_side``."""
    if image.format != "JPEG":
        return 1
    return max(s for s in (1, 2, 4, 8) if min(image.size) // s >= short_side or s == 1)


def decode_image(data: bytes, max_pixels: int | None = None, short_side: int | None = None):
    """Decode bytes to an RGB PIL image: EXIF orientation applied, first frame, any mode made RGB; images over
    ``max_pixels`` are read at a reduced JPEG scale, or refused. With ``short_side`` (fast decoding), a JPEG much
    larger than that is read at the reduced scale that keeps its short side at least ``short_side``: several times
    faster, pixels close to (not equal to) those of the full decode."""
    from PIL import ImageOps

    image = _open(data)
    try:
        scale = _scale(image, max_pixels or max_image_pixels())
        if short_side:
            scale = max(scale, _reduction(image, short_side))
        if scale > 1:
            width, height = image.size
            image.draft("RGB", (width // scale, height // scale))
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InputError(f"damaged image ({error})") from None
    return to_rgb(image)


_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def _to_8_bit(image):
    """A 16-bit, 32-bit or float greyscale image as 8-bit L: values over 255 scaled from 16 bits (round half up),
    a block of rows at a time, so no copy of the whole image is made beside the 8-bit result."""
    import numpy as np
    from PIL import Image

    width, height = image.size
    wide = (image.getextrema()[1] or 0) > 255
    out = np.empty((height, width), dtype=np.uint8)
    rows = max(1, 2**20 // max(1, width))
    for start in range(0, height, rows):
        block = np.asarray(image.crop((0, start, width, min(height, start + rows))))
        if block.dtype.kind == "f":
            block = np.nan_to_num(block.astype(np.float64))
            scaled = block * (255.0 / 65535.0) if wide else block
            out[start : start + rows] = np.clip(np.floor(scaled + 0.5), 0, 255)
        else:
            block = block.astype(np.int64)
            out[start : start + rows] = ((block * 255 + 32767) // 65535 if wide else block).clip(0, 255)
    return Image.fromarray(out, mode="L")


def to_rgb(image):
    """Any PIL mode to RGB: 16-bit and float scaled to 8 bits, transparency composited on white."""
    from PIL import Image

    if image.mode in _DEEP_MODES:
        image = _to_8_bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB") if image.mode != "RGB" else image


def fit_aspect(image, size: int):
    """Pad a very elongated image (black, centred) to the widest aspect ratio the BridgeTower image processor can
    resize at ``size`` (its short side would otherwise round to zero). The image is first shrunk so its long side is
    at most four times the processor's (the processor would shrink it further anyway), so the canvas stays small
    however thin the image: a 200,000 x 1 picture never becomes a 3-gigapixel one. Returns (image, how it was
    padded: "taller" for a wide one, "wider" for a tall one, "" when it was not)."""
    from PIL import Image

    longest = 1333 / 800 * size  # the processor's cap on the long side
    limit = longest / 32 / 1.25  # keep the short side well above one 32-pixel block
    width, height = image.size
    if max(width, height) <= limit * min(width, height):
        return image, ""
    shrink = max(width, height) / (4 * longest)
    if shrink > 1:
        image = image.resize((max(1, round(width / shrink)), max(1, round(height / shrink))), Image.Resampling.BICUBIC)
        width, height = image.size
    if width > height:
        canvas = Image.new("RGB", (width, round(width / limit)))
        canvas.paste(image, (0, (canvas.height - height) // 2))
        return canvas, "taller"
    canvas = Image.new("RGB", (round(height / limit), height))
    canvas.paste(image, ((canvas.width - width) // 2, 0))
    return canvas, "wider"


class DecodeBudget:
    """The pixels that may be decoding at once in this process: a server's request threads take their image's
    pixels before decoding and give them back when its pixel values are made, so a burst of large images waits its
    turn instead of taking memory all at once. An image larger than the whole budget is refused."""

    def __init__(self, pixels: int, timeout_s: float = 60.0):
        self.pixels = pixels
        self.timeout_s = timeout_s
        self.used = 0
        self.condition = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        if pixels > self.pixels:
            raise InputError(f"too large for this server ({pixels} pixels, over its decode budget of {self.pixels})")
        with self.condition:
            if not self.condition.wait_for(lambda: self.used + pixels <= self.pixels, timeout=self.timeout_s):
                raise Busy(f"images wait longer than {self.timeout_s:.0f} s to be decoded", "retry shortly")
            self.used += pixels
        try:
            yield
        finally:
            _give_back_memory()
            with self.condition:
                self.used -= pixels
                self.condition.notify_all()


def _release_memory():
    """glibc's ``malloc_trim``, where there is one: memory freed by one thread's decoding goes back to the system
    instead of staying in that thread's arena, where no other thread would reuse it."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


_trim = None


def _give_back_memory() -> None:
    global _trim
    if _trim is None:
        _trim = _release_memory() or (lambda _: 0)
    _trim(0)


_budget: DecodeBudget | None = None


def set_decode_budget(budget: DecodeBudget | None) -> None:
    """Bound the pixels decoding at once in this process (a server sets it at start; the CLI decodes one at a time)."""
    global _budget
    _budget = budget


@contextlib.contextmanager
def decoding(data: bytes) -> Iterator[None]:
    """Hold the process's decode budget (if any) for ``data``'s pixels while it is decoded and preprocessed."""
    if _budget is None:
        yield
        return
    with _budget.hold(decoded_pixels(data)):
        yield
