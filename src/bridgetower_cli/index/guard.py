"""The one guard for an index's files: an index path is nothing yet, or a regular file that is a bt index (bt's
application id as SQLite sees it, or an older bt's tables exactly). Anything else — a device, a FIFO, a folder, a
symlink, someone else's SQLite file whatever its tables — is refused in one line before anything opens it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from pathlib import Path

from ..errors import BtError, IndexDamaged
from ..reading import kind_of
from .vectors import MAGIC, vector_files

APPLICATION_ID = 0x62742069  # "bt i"
SQLITE_MAGIC = b"SQLite format 3\x00"
FOREIGN_HINT = "pass --index with another file name; bt never overwrites a file it did not create"


# The tables (and their columns) of the indexes bt 0.1 and 0.2 wrote, before the application id: an SQLite file
# without the id is taken for one of them only if it holds exactly these, nothing more.
OLD_TABLES = (
    {
        "meta": ("key", "value"),
        "images": ("path", "size", "mtime_ns", "model", "embedding"),
        "failures": ("path", "size", "mtime_ns", "reason"),
    },
    {
        "meta": ("key", "value"),
        "images": ("path", "size", "mtime_ns", "hash", "slot"),
        "failures": ("path", "size", "mtime_ns", "reason"),
    },
)


def refuse_foreign(path: Path) -> None:
    """The one guard of an index path, before anything opens it: it must not exist yet, or be a regular file (not a
    link, a device, a FIFO or a folder) that is a bt index: bt's application id in its SQLite header, or an older
    bt's tables exactly, or empty (an index another bt process is creating). Anything else is refused in one line
    and never opened for writing."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise BtError(f"cannot read the index {path}: {error.strerror or error}", "check its permissions") from None
    if stat.S_ISLNK(mode):
        raise BtError(
            f"{path} is a symbolic link, not an index file", f"pass the file itself: {os.path.realpath(path)}"
        )
    if not stat.S_ISREG(mode):
        raise BtError(f"{path} is not an index file ({kind_of(mode)})", FOREIGN_HINT)
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as file:
            header = file.read(100)
    except OSError as error:
        raise BtError(f"cannot read the index {path}: {error.strerror or error}", "check its permissions") from None
    if not header:
        return
    if header[:16] != SQLITE_MAGIC:
        if _bt_vectors_beside(Path(path)):  # (bt's own index, its header overwritten: not someone else's file)
            raise IndexDamaged(
                f"the index {path} is damaged: its SQLite header is overwritten",
                f"remove {path} and its vector files ({Path(path).name}.vectors-*), then index again",
            )
        raise BtError(f"{path} is not a bt index (not an SQLite file)", FOREIGN_HINT)
    if int.from_bytes(header[68:72], "big") == APPLICATION_ID:
        return
    application_id, tables = _identity(path)  # (as SQLite sees it: a header still in the WAL included)
    if application_id == APPLICATION_ID or tables == {}:
        return  # bt's, or no tables at all: nothing to destroy (an index another process is creating, say)
    if not any(tables is not None and {"meta", "images"} <= tables.keys() and all(
        old.get(name) == columns for name, columns in tables.items()
    ) for old in OLD_TABLES):  # fmt: skip
        raise BtError(f"{path} is not a bt index (an SQLite database of something else)", FOREIGN_HINT)


def _identity(path: Path) -> tuple[int | None, dict[str, tuple[str, ...]] | None]:
    """An SQLite file's application id and its tables with their columns, read-only (None: not readable as SQLite)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            application_id = db.execute("PRAGMA application_id").fetchone()[0]
            names = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return application_id, {
                name: tuple(row[1] for row in db.execute(f'PRAGMA table_info("{name}")')) for name in names
            }
    except sqlite3.DatabaseError:
        return None, None


def _bt_vectors_beside(path: Path) -> bool:
    """Whether a vector file with bt's header sits beside ``path`` under its name (it was a bt index)."""
    for vectors in vector_files(path).values():
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        with contextlib.suppress(OSError), os.fdopen(os.open(vectors, flags), "rb") as file:
            if file.read(len(MAGIC)) == MAGIC:
                return True
    return False
