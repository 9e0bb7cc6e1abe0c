"""The embedding index behind ``bt retrieve``: one SQLite file of image ITC embeddings, kept up to date incrementally.

Rows are keyed by absolute path and carry the file's size and mtime, so a refresh embeds only new and changed files
and drops rows of files that are gone. Writes go in small transactions (WAL journal): a crash or Ctrl-C loses at
most the batch in flight, and the next run resumes. The index records the model it was built with and refuses to
mix in another. No torch here: embeddings arrive as float lists and leave as numpy arrays.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BtError

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    model TEXT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""


def default_index_path() -> Path:
    """``$BT_INDEX``, else ``$XDG_CACHE_HOME/bt/index.sqlite`` (``~/.cache/bt/index.sqlite``)."""
    if os.environ.get("BT_INDEX"):
        return Path(os.environ["BT_INDEX"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "bt" / "index.sqlite"


@dataclass(frozen=True)
class FileState:
    path: str
    size: int
    mtime_ns: int


@dataclass
class RefreshPlan:
    """What a refresh must do: files to embed (new or changed) and rows to drop."""

    to_embed: list[FileState]
    to_drop: list[str]
    unchanged: int
    changed: int


@dataclass
class RefreshStats:
    new: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0

    def line(self) -> str:
        return f"index: {self.new} new, {self.changed} changed, {self.removed} removed, {self.unchanged} unchanged" + (
            f", {self.failed} unreadable" if self.failed else ""
        )


def file_state(path: str) -> FileState:
    """Size and mtime of an absolute path (as ``ImageSource.path`` holds)."""
    stat = os.stat(path)
    return FileState(path, stat.st_size, stat.st_mtime_ns)


class EmbeddingIndex:
    """A SQLite file of image embeddings for one model."""

    def __init__(self, path: Path, fingerprint: str, dim: int, rebuild: bool = False, label: str | None = None):
        """``fingerprint`` identifies the checkpoint (``hub.fingerprint``); ``label`` is how messages name it."""
        self.path = path
        self.fingerprint = fingerprint
        self.label = label or fingerprint
        self.dim = dim
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if rebuild:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
            self.db = sqlite3.connect(path, timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self._check_model()
        except sqlite3.DatabaseError as error:
            if "readonly" in str(error) or "unable to open" in str(error):
                raise BtError(
                    f"cannot write the index {path}: {error}", "pass --index FILE on a writable path"
                ) from None
            raise BtError(f"the index {path} is corrupt ({error})", "rebuild it with --rebuild") from None
        except OSError as error:
            raise BtError(
                f"cannot create the index {path}: {error.strerror or error}", "pass --index FILE on a writable path"
            ) from None

    def _check_model(self) -> None:
        with self.transaction():
            meta = dict(self.db.execute("SELECT key, value FROM meta"))
            if not meta:
                rows = [
                    ("schema", SCHEMA_VERSION),
                    ("model", self.fingerprint),
                    ("dim", str(self.dim)),
                    ("label", self.label),
                ]
                self.db.executemany("INSERT INTO meta VALUES (?, ?)", rows)
                return
        if meta.get("schema") != SCHEMA_VERSION:
            raise BtError(f"the index {self.path} has an unknown schema", "rebuild it with --rebuild")
        if meta.get("model") != self.fingerprint or meta.get("dim") != str(self.dim):
            raise BtError(
                f"the index {self.path} was built with another model ({meta.get('label')}), not {self.label}",
                "rebuild it with --rebuild, or pass --index FILE for a separate index",
            )

    def transaction(self):
        return _Transaction(self.db)

    def close(self) -> None:
        self.db.close()

    def plan(self, files: Iterable[FileState], folders: Iterable[Path] = ()) -> RefreshPlan:
        """Compare files on disk with the index; rows under ``folders`` whose file is gone are to be dropped."""
        known = {p: (s, m) for p, s, m in self.db.execute("SELECT path, size, mtime_ns FROM images")}
        failed = {p: (s, m) for p, s, m in self.db.execute("SELECT path, size, mtime_ns FROM failures")}
        to_embed, unchanged, changed, present = [], 0, 0, set()
        for state in files:
            present.add(state.path)
            stamp = (state.size, state.mtime_ns)
            if known.get(state.path) == stamp or failed.get(state.path) == stamp:
                unchanged += 1
            else:
                to_embed.append(state)
                changed += state.path in known or state.path in failed
        prefixes = tuple(os.path.join(os.path.abspath(folder), "") for folder in folders)
        to_drop = [p for p in {*known, *failed} if p.startswith(prefixes) and p not in present] if prefixes else []
        return RefreshPlan(to_embed, to_drop, unchanged, changed)

    def drop(self, paths: list[str]) -> None:
        with self.transaction():
            self.db.executemany("DELETE FROM images WHERE path = ?", [(p,) for p in paths])
            self.db.executemany("DELETE FROM failures WHERE path = ?", [(p,) for p in paths])

    def store(self, rows: list[tuple[FileState, list[float]]], failures: list[tuple[FileState, str]]) -> None:
        """Write a batch of embeddings and of unreadable files in one transaction."""
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?)",
                [
                    (s.path, s.size, s.mtime_ns, self.fingerprint, np.asarray(e, dtype=np.float32).tobytes())
                    for s, e in rows
                ],
            )
            self.db.executemany("DELETE FROM failures WHERE path = ?", [(s.path,) for s, _ in rows])
            self.db.executemany(
                "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)",
                [(s.path, s.size, s.mtime_ns, reason) for s, reason in failures],
            )
            self.db.executemany("DELETE FROM images WHERE path = ?", [(s.path,) for s, _ in failures])

    def embeddings(self, paths: Iterable[str]) -> tuple[list[str], np.ndarray]:
        """The stored embeddings of ``paths`` (those indexed), in the order given: (paths, [n, dim] float32)."""
        wanted = list(paths)
        found: dict[str, bytes] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT path, embedding FROM images WHERE path IN ({marks})"
            found.update(self.db.execute(query, chunk))
        kept = [p for p in wanted if p in found]
        matrix = np.frombuffer(b"".join(found[p] for p in kept), dtype=np.float32).reshape(len(kept), self.dim)
        return kept, matrix

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any exception (KeyboardInterrupt included)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, traceback):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False
