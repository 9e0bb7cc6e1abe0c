"""Image and text sources: expanding paths, directories, globs, URLs and stdin lists; decoding images to RGB."""

from __future__ import annotations

import glob
import io
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from .errors import BtError, InputError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
TEXT_FILE_SUFFIXES = frozenset({".txt", ".text", ".csv", ".tsv", ".md", ".json", ".jsonl", ".lst"})
URL_TIMEOUT_S = (5.0, 20.0)  # connect, read
URL_MAX_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class ImageSource:
    """One image to read: a local path (absolute), an http(s) URL, or bytes already read (what a bt server gets from
    its clients); ``name`` is how records refer to it."""

    name: str
    path: str | None = None
    url: str | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def is_url(self) -> bool:
        return self.url is not None


def _is_url(spec: str) -> bool:
    return "://" in spec


_URL = re.compile(r"[A-Za-z][\w+.-]*://\S+")
# No white space, and a path separator or a file suffix: "photos/typo/", "cat.jgp", "captions.txt".
_PATH_LIKE = re.compile(r"\S*[/\\]\S*|\S+\.[A-Za-z][A-Za-z0-9]{0,4}")


def split_arguments(items: Iterable[str]) -> tuple[list[str], list[str]]:
    """Sort command-line arguments, in any order, into image sources and texts. An existing image file or directory,
    a URL, a glob that matches and ``-`` are images; an argument that looks like a path but names nothing, or a
    file that is no image (``captions.txt``), is an error; the rest (anything with a space) are texts."""
    images, texts = [], []
    for item in items:
        kind = _kind_of(item)
        (images if kind == "image" else texts).append(item)
    return images, texts


def _kind_of(item: str) -> str:
    if not item.strip():
        return "text"  # an empty text, refused as such
    if item == "-" or _URL.fullmatch(item):
        return "image"
    path = Path(item).expanduser()
    try:
        if path.is_dir():
            return "image"
        if path.is_file():
            if path.suffix.lower() in TEXT_FILE_SUFFIXES:
                raise BtError(
                    f"{item} is a text file, not an image",
                    f"read texts from it with --texts-file {item}, or pass a caption with -t {item!r}",
                )
            return "image"
        if glob.has_magic(item) and glob.glob(str(path), recursive=True):
            return "image"
    except OSError:  # a long text is no valid file name
        return "text"
    if _PATH_LIKE.fullmatch(item):
        what = "no image files match" if glob.has_magic(item) else "no such file or directory:"
        raise BtError(f"{what} {item}", f"check the path; to use it as a caption, pass -t {item!r}")
    return "text"


def _walk(directory: Path) -> list[ImageSource]:
    """Image files under ``directory`` (recursively, hidden files and folders skipped, symlinked folders not
    followed), sorted by path. One scandir pass, string slicing instead of path joins: 100,000 files in ~0.3 s."""
    root = os.path.abspath(directory)
    found = []
    folders = [root]
    while folders:
        try:
            entries = os.scandir(folders.pop())
        except OSError:  # unreadable folder: as os.walk, passed over
            continue
        with entries:
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                if entry.is_dir():
                    if not entry.is_symlink():
                        folders.append(entry.path)
                    continue
                dot = name.rfind(".")
                if dot > 0 and name[dot:].lower() in IMAGE_SUFFIXES:
                    found.append(entry.path)
    found.sort()
    shown, cut = str(directory), len(root) + 1
    prefix = shown if shown.endswith(os.sep) else shown + os.sep
    return [ImageSource(prefix + absolute[cut:], path=absolute) for absolute in found]


def expand_image_sources(specs: Iterable[str], stdin: TextIO | None = None) -> list[ImageSource]:
    """Expand files, directories (walked, image files only), globs, URLs and ``-`` (paths on stdin)."""
    sources: list[ImageSource] = []
    for spec in specs:
        if spec == "-":
            lines = [line.strip() for line in (stdin or sys.stdin)]
            sources += expand_image_sources([line for line in lines if line and line != "-"])
        elif _is_url(spec):
            scheme = spec.split("://", 1)[0].lower()
            if scheme not in ("http", "https"):
                raise BtError(f"unsupported URL scheme {scheme}:// in {spec}", "use an http(s) URL or a local path")
            sources.append(ImageSource(spec, url=spec))
        else:
            sources += _expand_path(spec)
    seen: set[str] = set()
    unique = [s for s in sources if not (s.name in seen or seen.add(s.name))]
    if not unique:
        raise BtError("no images given", "pass image files, directories, globs or URLs")
    return unique


def _expand_path(spec: str) -> list[ImageSource]:
    path = Path(spec).expanduser()
    try:
        path.exists()
    except OSError as error:
        raise BtError(f"not a usable path: {spec[:60]}... ({error.strerror})", "check the path") from None
    if path.is_dir():
        found = _walk(path)
        if not found:
            raise BtError(
                f"no image files in directory {spec}", f"image files end in {', '.join(sorted(IMAGE_SUFFIXES))}"
            )
        return found
    if path.is_file():
        return [ImageSource(spec, path=os.path.abspath(path))]
    if glob.has_magic(spec):
        matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
        files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise BtError(f"no image files match {spec}", "check the pattern; quote it to let bt expand it")
        return [ImageSource(str(m), path=os.path.abspath(m)) for m in files]
    if path.exists():
        raise BtError(f"{spec} is not a regular file or directory", "pass image files, directories, globs or URLs")
    raise BtError(f"no such file or directory: {spec}", "check the path")


def read_bytes(source: ImageSource) -> bytes:
    """The raw bytes of a source; a URL is fetched with a timeout and a size cap."""
    if source.data is not None:
        return source.data
    if not source.is_url:
        try:
            with open(source.path, "rb") as file:
                return file.read()
        except OSError as error:
            raise InputError(f"cannot read it: {error.strerror or error}") from None
    import requests

    too_large = f"larger than {URL_MAX_BYTES // 2**20} MiB"
    try:
        with requests.get(source.url, timeout=URL_TIMEOUT_S, stream=True) as response:
            if response.status_code != 200:
                raise InputError(f"HTTP {response.status_code} {response.reason}")
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type and not content_type.startswith("image/") and content_type != "application/octet-stream":
                raise InputError(f"not an image (Content-Type {content_type})")
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > URL_MAX_BYTES:
                raise InputError(too_large)
            chunks, size = [], 0
            for chunk in response.iter_content(64 * 1024):
                size += len(chunk)
                if size > URL_MAX_BYTES:
                    raise InputError(too_large)
                chunks.append(chunk)
            return b"".join(chunks)
    except requests.Timeout:
        raise InputError(f"no answer within {URL_TIMEOUT_S[1]:.0f} s") from None
    except requests.RequestException as error:
        raise InputError(f"cannot fetch it: {type(error).__name__}") from None


# Decoded images above this many pixels are refused (env BT_MAX_IMAGE_PIXELS): Pillow's own bomb limit. A larger JPEG
# is decoded at 1/2, 1/4 or 1/8 scale (JPEG draft mode) to fit under it: a 108-megapixel phone photo is read at
# 27 megapixels, still far above what the model sees, with a quarter of the memory.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


def max_image_pixels() -> int:
    value = os.environ.get("BT_MAX_IMAGE_PIXELS", "")
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise BtError(
            f"BT_MAX_IMAGE_PIXELS={value} is not a positive whole number", "e.g. BT_MAX_IMAGE_PIXELS=200000000"
        )
    return int(value)


def decode_image(data: bytes, max_pixels: int | None = None):
    """Decode bytes to an RGB PIL image: EXIF orientation applied, first frame, any mode made RGB; images over
    ``max_pixels`` are read at a reduced JPEG scale, or refused."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    limit = max_pixels or max_image_pixels()
    if not data:
        raise InputError("empty (0 bytes)")
    Image.MAX_IMAGE_PIXELS = None  # bt applies its own limit, after any reduced-scale decoding
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        width, height = image.size
        if width * height > limit:
            scale = next((s for s in (2, 4, 8) if image.format == "JPEG" and width * height <= limit * s * s), None)
            if scale is None:
                raise InputError(
                    f"too large to decode safely ({width}x{height} pixels, over {limit}; BT_MAX_IMAGE_PIXELS raises it)"
                )
            image.draft("RGB", (width // scale, height // scale))
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise InputError("not an image file bt can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InputError(f"damaged image ({error})") from None
    return to_rgb(image)


def to_rgb(image):
    """Any PIL mode to RGB: 16-bit and float scaled to 8 bits, transparency composited on white."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        if array.max(initial=0) > 255:
            array = array * (255.0 / 65535.0)
        image = Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB") if image.mode != "RGB" else image


def load_image(source: ImageSource):
    """Read and decode one source to an RGB PIL image (raises InputError with the reason)."""
    return decode_image(read_bytes(source))


def read_texts(arguments: Iterable[str], texts_file: str | None, stdin: TextIO | None = None) -> list[str]:
    """Texts from arguments and/or a file with one text per line (``-`` = stdin; blank lines skipped), each once."""
    texts = list(arguments)
    if texts_file is not None:
        if texts_file == "-":
            lines = (stdin or sys.stdin).read().splitlines()
        else:
            try:
                lines = Path(texts_file).expanduser().read_text(encoding="utf-8").splitlines()
            except OSError as error:
                raise BtError(
                    f"cannot read texts file {texts_file}: {error.strerror or error}", "check the path"
                ) from None
            except UnicodeDecodeError:
                raise BtError(f"texts file {texts_file} is not UTF-8 text", "save it as UTF-8") from None
        texts += [line.strip() for line in lines if line.strip()]
    for text in texts:
        if not text.strip():
            raise BtError("a text is empty", "give every text some words")
    if not texts:
        raise BtError("no texts given", "pass texts as arguments, with -t TEXT or with --texts-file FILE")
    return list(dict.fromkeys(texts))  # a repeated text counts once, as a repeated image does


def fit_aspect(image, size: int):
    """Pad a very elongated image (black, centred) to the widest aspect ratio the BridgeTower image processor can
    resize at ``size`` (its short side would otherwise round to zero). Returns (image, whether it was padded)."""
    from PIL import Image

    longest = 1333 / 800 * size  # the processor's cap on the long side
    limit = longest / 32 / 1.25  # keep the short side well above one 32-pixel block
    width, height = image.size
    if max(width, height) <= limit * min(width, height):
        return image, False
    if width > height:
        canvas = Image.new("RGB", (width, round(width / limit)))
        canvas.paste(image, (0, (canvas.height - height) // 2))
    else:
        canvas = Image.new("RGB", (round(height / limit), height))
        canvas.paste(image, ((canvas.width - width) // 2, 0))
    return canvas, True
