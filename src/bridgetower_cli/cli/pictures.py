"""Where ``bt explain`` writes its pictures: a name per (image, text), the format the suffix names, no half-written
file under the final name. (The drawing is the library's: ``bridgetower_cli.pictures``.)"""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def picture_name(image: str, text: str) -> str:
    """A file name after the image and the text: ``cat--two-cats-on-a-couch.png``."""
    slug = "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())[:60] or "text"
    return f"{Path(image.rstrip('/')).stem or 'image'}--{slug}.png"


PICTURE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}


def picture_format(path: Path) -> str:
    """The format a picture's suffix names; another suffix is refused (before any work)."""
    try:
        return PICTURE_FORMATS[Path(path).suffix.lower()]
    except KeyError:
        from ..errors import UsageError

        raise UsageError(
            f"cannot write a picture to {path}: unknown suffix", f"end it in {', '.join(PICTURE_FORMATS)}"
        ) from None


def save_picture(picture: Image.Image, path: Path) -> None:
    """Written in the format its suffix names, to a temporary name and renamed: no half-written picture under the
    final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    picture.save(partial, format=picture_format(path), **({"quality": 92} if picture_format(path) == "JPEG" else {}))
    partial.replace(path)
