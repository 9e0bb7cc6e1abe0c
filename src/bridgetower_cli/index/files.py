"""The files an index describes: their state on disk (size, mtime), content ids, and what a refresh must do."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from .. import cancel
from ..reading import open_file


def default_index_path() -> Path:
    """``$BT_INDEX``, else ``$XDG_CACHE_HOME/bt/index.sqlite`` (``~/.cache/bt/index.sqlite``)."""
    if os.environ.get("BT_INDEX"):
        return Path(os.environ["BT_INDEX"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "bt" / "index.sqlite"


class FileState(NamedTuple):
    path: str
    size: int
    mtime_ns: int


@dataclass
class RefreshPlan:
    """What a refresh must do: files to embed (new or changed) and rows to drop."""

    to_embed: list[FileState]
    to_drop: list[str]
    unchanged: int
    changed: set[str]  # the paths among ``to_embed`` the index held before, with another size or mtime
    unseen: list[str] = field(default_factory=list)  # rows kept though their file could not be seen (stale)


def file_state(path: str) -> FileState:
    """Size and mtime of an absolute path (as ``ImageSource.path`` holds)."""
    stat = os.stat(path)
    return FileState(path, stat.st_size, stat.st_mtime_ns)


def file_states(paths: Iterable[str]) -> tuple[list[FileState], list[tuple[str, str]]]:
    """``file_state`` of many paths, in a tight loop; a path that cannot be stat'ed (a dangling symlink, a file that
    vanished or cannot be reached) is returned apart, with why."""
    stat, states, missing = os.stat, [], []
    for k, path in enumerate(paths):
        if k % 4096 == 0:
            cancel.check()
        try:
            s = stat(path)
        except OSError as error:
            reason = "a dangling symlink" if os.path.islink(path) else f"cannot read it: {error.strerror or error}"
            missing.append((path, reason))
            continue
        states.append(FileState(path, s.st_size, s.st_mtime_ns))
    return states, missing


def content_hash(path: str) -> str:
    """A file's content id (BLAKE2b, 128 bits): how a moved or renamed image is recognised. Opened as every image
    is (``reading.open_file``); raises InputError when it cannot be."""
    digest = hashlib.blake2b(digest_size=16)
    with open_file(path) as file:
        for block in iter(lambda: file.read(2**20), b""):
            cancel.check()
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Content:
    """What an index records of a file's bytes: their hash, and when the photo was taken (EXIF; None: unknown)."""

    hash: str
    taken: int | None


def bytes_hash(data: bytes) -> str:
    """``content_hash`` of bytes already read."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def under(folders: Iterable[Path]) -> list[tuple[str, str]]:
    """Key ranges [low, high) of the paths under each folder (for range scans of the primary key)."""
    ranges = []
    for folder in folders:
        prefix = os.path.join(os.path.abspath(folder), "")
        ranges.append((prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)))
    return ranges


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
