"""Caption sets for ``bt eval``: the Karpathy split files and the LAVIS test files, read and checked without torch
(a malformed file is said before any model loads)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BtError
from ..sources import ImageSource


@dataclass
class CaptionSet:
    """Images (paths as named), captions, the image of each caption, and the images' absolute paths."""

    images: list[str]
    texts: list[str]
    text_image: list[int]
    files: list[str] | None = None  # (None: the names made absolute here)

    def sources(self) -> list[ImageSource]:
        files = self.files or [os.path.abspath(name) for name in self.images]
        return [ImageSource(name, path=path) for name, path in zip(self.images, files)]


def _malformed(path: Path, where: str, what: str) -> BtError:
    return BtError(
        f"{path}: {where} {what}",
        "expected the Karpathy split format (dataset_flickr30k.json: images[].filename, split, sentences[].raw) or "
        'the LAVIS test format ([{"image": ..., "caption": [...]}])',
    )


def load_caption_set(path: Path, images_root: Path, split: str = "test") -> CaptionSet:
    """Read a Karpathy-split (``{"images": [...]}``) or LAVIS (``[{"image", "caption"}]``) annotation file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise BtError(f"cannot read {path}: {error.strerror or error}", "check the path") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise BtError(f"{path} is not valid JSON ({error})", "check the file") from None
    images: list[str] = []
    texts: list[str] = []
    text_image: list[int] = []

    def add(image: str, captions, where: str) -> None:
        if (
            not isinstance(captions, list)
            or not captions
            or not all(isinstance(c, str) and c.strip() for c in captions)
        ):
            raise _malformed(path, where, "has no captions (a non-empty list of non-empty strings)")
        images.append(os.path.join(images_root, image))
        for caption in captions:
            texts.append(caption.strip())
            text_image.append(len(images) - 1)

    if isinstance(data, dict) and isinstance(data.get("images"), list):
        for k, entry in enumerate(data["images"]):
            where = f"images[{k}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
                raise _malformed(path, where, "has no 'filename'")
            if entry.get("split") != split:
                continue
            sentences = entry.get("sentences")
            if not isinstance(sentences, list) or not all(isinstance(s, dict) and "raw" in s for s in sentences):
                raise _malformed(path, where, "has no 'sentences' with 'raw' captions")
            add(os.path.join(entry.get("filepath") or "", entry["filename"]), [s["raw"] for s in sentences], where)
        if not images:
            splits = sorted(
                {e["split"] for e in data["images"] if isinstance(e, dict) and isinstance(e.get("split"), str)}
            )
            hint = (
                f"choose --split from {', '.join(splits)}"
                if splits
                else "its images name no split: is it a Karpathy file?"
            )
            raise BtError(f"{path} has no images in split {split!r}", hint)
    elif isinstance(data, list):
        for k, entry in enumerate(data):
            where = f"entry [{k}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
                raise _malformed(path, where, "has no 'image'")
            captions = entry.get("caption")
            add(entry["image"], [captions] if isinstance(captions, str) else captions, where)
        if not images:
            raise BtError(f"{path} holds no images", "check the file")
    else:
        raise _malformed(path, "the top level", "is neither an object with 'images' nor a list")
    return CaptionSet(images, texts, text_image)
