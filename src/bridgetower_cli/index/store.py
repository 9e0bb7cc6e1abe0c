"""The embedding index behind ``bt retrieve``: a SQLite file, the source of truth, and a vector file beside it.

SQLite holds, per image, its absolute path, size, mtime, a content hash and the slot of its embedding; failures;
the model it was built with. The embeddings live in ``<index>.vectors-<generation>``: float32 rows, appended and
never rewritten in place, read by queries through a memory map (no copy, no row read out of SQLite). Kill-safety:
a batch's vectors are appended and flushed to disk before the SQLite transaction that references them commits, so a
crash leaves at most unreferenced rows at the end of the vector file. When more than half the rows are unreferenced
(changed or deleted files), the file is rewritten as the next generation and the switch committed in one
transaction; stale generations are deleted under the write lock. A moved or renamed file reuses its embedding by
content hash. The index records its model and refuses to mix in another. No torch here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import BtError

SCHEMA_VERSION = "2"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL,
    slot INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS images_by_hash ON images (hash);
CREATE INDEX IF NOT EXISTS images_by_slot ON images (slot);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""


SQLITE_MAGIC = b"SQLite format 3\x00"
APPLICATION_ID = 0x62742069  # "bt i", in the SQLite header (PRAGMA application_id): a bt index, even if damaged


def refuse_foreign(path: Path) -> None:
    """Refuse to open (and so to write, rebuild or unlink) a file that is not a bt index: only a bt index, a missing
    file or an empty one may become one."""
    try:
        with open(path, "rb") as file:
            header = file.read(100)
    except FileNotFoundError:
        return
    except OSError as error:
        raise BtError(f"cannot read the index {path}: {error.strerror or error}", "check its permissions") from None
    if not header:
        return
    hint = "pass --index with another file name; bt never overwrites a file it did not create"
    if header[:16] != SQLITE_MAGIC:
        raise BtError(f"{path} is not a bt index (not an SQLite file)", hint)
    if int.from_bytes(header[68:72], "big") == APPLICATION_ID:
        return
    try:  # an index of bt 0.1 and 0.2, before the application id: known by its meta table
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            keys = {key for (key,) in db.execute("SELECT key FROM meta")}
    except sqlite3.DatabaseError:
        keys = set()
    if not {"schema", "model", "dim"} <= keys:
        raise BtError(f"{path} is not a bt index (an SQLite database of something else)", hint)


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
    changed: int


@dataclass
class RefreshStats:
    new: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    reused: int = 0  # new or changed files whose embedding came from an indexed file with the same content

    def line(self) -> str:
        extra = (f", {self.reused} reused" if self.reused else "") + (
            f", {self.failed} unreadable" if self.failed else ""
        )
        return (
            f"index: {self.new} new, {self.changed} changed, {self.removed} removed, {self.unchanged} unchanged{extra}"
        )


@dataclass
class IndexStats:
    """What ``bt index --stats`` reports."""

    index: str
    model: str
    fingerprint: str
    dim: int
    images: int
    unreadable: int
    sqlite_bytes: int
    vector_bytes: int
    vector_rows: int
    last_refresh: str | None


def file_state(path: str) -> FileState:
    """Size and mtime of an absolute path (as ``ImageSource.path`` holds)."""
    stat = os.stat(path)
    return FileState(path, stat.st_size, stat.st_mtime_ns)


def file_states(paths: Iterable[str]) -> list[FileState]:
    """``file_state`` of many paths, in a tight loop."""
    stat = os.stat
    return [FileState(path, (s := stat(path)).st_size, s.st_mtime_ns) for path in paths]


def content_hash(path: str) -> str:
    """A file's content id (BLAKE2b, 128 bits): how a moved or renamed image is recognised."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


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


class EmbeddingIndex:
    """A SQLite index of image embeddings for one model, with its vector file."""

    def __init__(self, path: Path, fingerprint: str, dim: int, rebuild: bool = False, label: str | None = None):
        """``fingerprint`` identifies the checkpoint (``hub.fingerprint``); ``label`` is how messages name it."""
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.label = label or fingerprint
        self.dim = dim
        self.row_bytes = 4 * dim
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            refuse_foreign(self.path)
            if rebuild:
                for stale in [Path(f"{self.path}{suffix}") for suffix in ("", "-wal", "-shm")] + self._vector_files():
                    stale.unlink(missing_ok=True)
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._check_schema()
            self.db.executescript(SCHEMA)
            self._check_model()
        except sqlite3.DatabaseError as error:
            if "readonly" in str(error) or "unable to open" in str(error):
                raise BtError(
                    f"cannot write the index {self.path}: {error}", "pass --index FILE on a writable path"
                ) from None
            raise BtError(f"the index {self.path} is damaged ({error})", "rebuild it with --rebuild") from None
        except OSError as error:
            raise BtError(
                f"cannot create the index {self.path}: {error.strerror or error}",
                "pass --index FILE on a writable path",
            ) from None

    # -- opening -------------------------------------------------------------------------------------------------

    def _check_schema(self) -> None:
        tables = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" in tables:
            schema = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if schema and schema[0] != SCHEMA_VERSION:
                raise BtError(
                    f"the index {self.path} was written by another version of bt (schema {schema[0]})",
                    "rebuild it with --rebuild (the embeddings are computed again)",
                )

    def _check_model(self) -> None:
        with self.transaction():
            meta = dict(self.db.execute("SELECT key, value FROM meta"))
            if not meta:
                rows = [
                    ("schema", SCHEMA_VERSION),
                    ("model", self.fingerprint),
                    ("dim", str(self.dim)),
                    ("label", self.label),
                    ("generation", "0"),
                ]
                self.db.executemany("INSERT INTO meta VALUES (?, ?)", rows)
                meta = dict(rows)
            if meta.get("model") == self.fingerprint and meta.get("dim") == str(self.dim):
                self._remove_stale_vector_files(int(meta["generation"]))
        if meta.get("model") != self.fingerprint or meta.get("dim") != str(self.dim):
            raise BtError(
                f"the index {self.path} was built with another model ({meta.get('label')}), not {self.label}",
                "rebuild it with --rebuild, or keep one index per model with --index FILE",
            )

    def _vector_files(self) -> list[Path]:
        """This index's vector files: exactly ``<name>.vectors-<generation>`` (the name never a pattern)."""
        pattern = re.compile(re.escape(self.path.name) + r"\.vectors-\d+")
        try:
            names = os.listdir(self.path.parent)
        except OSError:
            return []
        return sorted(self.path.parent / name for name in names if pattern.fullmatch(name))

    def _remove_stale_vector_files(self, generation: int) -> None:
        """Under the write lock: no compaction is writing the next generation meanwhile."""
        current = self.vectors_path(generation)
        for file in self._vector_files():
            if file != current:
                file.unlink(missing_ok=True)

    def vectors_path(self, generation: int | None = None) -> Path:
        if generation is None:
            generation = self._generation()
        return Path(f"{self.path}.vectors-{generation}")

    def _generation(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def transaction(self, read: bool = False):
        return _Transaction(self.db, read)

    def close(self) -> None:
        self.db.close()

    # -- refresh ---------------------------------------------------------------------------------------------------

    def plan(self, files: Iterable[FileState], folders: Iterable[Path] = ()) -> RefreshPlan:
        """Compare files on disk with the index; rows under ``folders`` whose file is gone are to be dropped."""
        ranges = under(folders)

        def inside(path: str) -> bool:
            return any(low <= path < high for low, high in ranges)

        known: dict[str, tuple[int, int]] = {}
        query = (
            "SELECT path, size, mtime_ns FROM images WHERE {0} "
            "UNION ALL SELECT path, size, mtime_ns FROM failures WHERE {0}"
        )
        for low, high in ranges:  # the rows under the folders: range scans of the primary keys
            known.update(
                (p, (s, m))
                for p, s, m in self.db.execute(query.format("path >= ? AND path < ?"), (low, high, low, high))
            )
        files = list(files)
        outside = [f.path for f in files if not inside(f.path)] if ranges else [f.path for f in files]
        for chunk in _chunks(outside, 400):
            marks = ",".join("?" * len(chunk))
            known.update((p, (s, m)) for p, s, m in self.db.execute(query.format(f"path IN ({marks})"), chunk + chunk))
        to_embed, changed = [], 0
        for state in files:
            stamp = known.get(state.path)
            if stamp != (state.size, state.mtime_ns):
                to_embed.append(state)
                changed += stamp is not None
        present = {state.path for state in files}
        to_drop = [p for p in known if p not in present and inside(p)] if ranges else []
        return RefreshPlan(to_embed, to_drop, len(files) - len(to_embed), changed)

    def drop(self, paths: list[str]) -> None:
        with self.transaction():
            self.db.executemany("DELETE FROM images WHERE path = ?", [(p,) for p in paths])
            self.db.executemany("DELETE FROM failures WHERE path = ?", [(p,) for p in paths])

    def slots_of(self, hashes: Iterable[str]) -> dict[str, int]:
        """The embedding slot of each content hash already indexed."""
        found: dict[str, int] = {}
        for chunk in _chunks(list(set(hashes)), 500):
            marks = ",".join("?" * len(chunk))
            found.update(self.db.execute(f"SELECT hash, slot FROM images WHERE hash IN ({marks})", chunk))
        return found

    def link(self, rows: list[tuple[FileState, str, int]]) -> None:
        """Index files whose embedding is already stored (same content): (state, hash, slot)."""
        with self.transaction():
            self._put(rows)

    def store(self, rows: list[tuple[FileState, str, list[float]]], failures: list[tuple[FileState, str]]) -> None:
        """Write a batch of embeddings (state, hash, vector) and of unreadable files: the vectors appended and on
        disk before the transaction that references them commits."""
        with self.transaction():
            first = self._append(np.asarray([vector for _, _, vector in rows], dtype=np.float32)) if rows else 0
            self._put([(state, digest, first + k) for k, (state, digest, _) in enumerate(rows)])
            self.db.executemany(
                "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)",
                [(s.path, s.size, s.mtime_ns, reason) for s, reason in failures],
            )
            self.db.executemany("DELETE FROM images WHERE path = ?", [(s.path,) for s, _ in failures])
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('refreshed_at', ?)", (str(time.time()),))

    def maintain(self) -> None:
        """After a refresh: compact the vector file once more than half of it is unreferenced."""
        if self._garbage() > max(1024, self.count()):
            self.compact()

    def _put(self, rows: list[tuple[FileState, str, int]]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?)",
            [(s.path, s.size, s.mtime_ns, digest, slot) for s, digest, slot in rows],
        )
        self.db.executemany("DELETE FROM failures WHERE path = ?", [(s.path,) for s, _, _ in rows])

    def _append(self, vectors: np.ndarray) -> int:
        """Append rows to the vector file (inside a write transaction: one writer at a time); the first new slot."""
        path = self.vectors_path()
        with open(path, "ab") as file:
            size = file.seek(0, os.SEEK_END)
            whole = size // self.row_bytes
            if size != whole * self.row_bytes:  # a torn row from a crash: never referenced, cut it
                file.truncate(whole * self.row_bytes)
            file.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
            file.flush()
            os.fsync(file.fileno())
        return whole

    def _garbage(self) -> int:
        try:
            rows = self.vectors_path().stat().st_size // self.row_bytes
        except FileNotFoundError:
            return 0
        used = self.db.execute("SELECT COUNT(DISTINCT slot) FROM images").fetchone()[0]
        return rows - used

    def compact(self) -> None:
        """Rewrite the vector file without unreferenced rows, as the next generation, switched in one commit."""
        with self.transaction():
            generation = self._generation()
            old = self.vectors(generation)
            slots = [slot for (slot,) in self.db.execute("SELECT DISTINCT slot FROM images ORDER BY slot")]
            new_path = self.vectors_path(generation + 1)
            with open(new_path, "wb") as file:
                for chunk in _chunks(slots, 65536):
                    file.write(np.ascontiguousarray(old[chunk]).tobytes())
                file.flush()
                os.fsync(file.fileno())
            self.db.executemany("UPDATE images SET slot = ? WHERE slot = ?", [(-1 - k, s) for k, s in enumerate(slots)])
            self.db.execute("UPDATE images SET slot = -1 - slot")
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(generation + 1),))
        self.vectors_path(generation).unlink(missing_ok=True)

    # -- queries -------------------------------------------------------------------------------------------------

    def vectors(self, generation: int | None = None) -> np.ndarray:
        """The vector file, memory-mapped read-only: [rows, dim] float32."""
        path = self.vectors_path(generation)
        rows = path.stat().st_size // self.row_bytes if path.exists() else 0
        if rows == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.memmap(path, dtype=np.float32, mode="r", shape=(rows, self.dim))

    def search(
        self, query: np.ndarray, want: int, folders: Iterable[Path] = (), files: Iterable[str] = ()
    ) -> tuple[list[str], np.ndarray]:
        """The ``want`` indexed images most similar to ``query`` (exact float32 cosines, best first) among those
        under ``folders`` and the ``files`` named. The query multiplies the whole memory-mapped matrix; only the best
        slots are looked up in SQLite, so a query costs one pass over the vectors, not one row read per image."""
        ranges, files = under(folders), set(files)
        with self.transaction(read=True):
            matrix = self.vectors()
            similarities = matrix @ np.asarray(query, dtype=np.float32)
            order = np.argsort(-similarities, kind="stable") if len(similarities) <= 4 * want else None
            found: list[tuple[str, float]] = []
            start, step = 0, max(64, 4 * want)
            while len(found) < want and start < len(similarities):
                if order is None:  # the next best slots, without sorting the whole file
                    bound = min(len(similarities), start + step)
                    part = np.argpartition(-similarities, bound - 1)[:bound]
                    block = part[np.argsort(-similarities[part], kind="stable")][start:bound]
                else:
                    block = order[start : start + step]
                start += len(block)
                step *= 4
                by_slot: dict[int, list[str]] = {}
                for chunk in _chunks(block.tolist(), 500):
                    marks = ",".join("?" * len(chunk))
                    for path, slot in self.db.execute(f"SELECT path, slot FROM images WHERE slot IN ({marks})", chunk):
                        if path in files or any(low <= path < high for low, high in ranges):
                            by_slot.setdefault(slot, []).append(path)
                for slot in block.tolist():
                    found += [(path, float(similarities[slot])) for path in sorted(by_slot.get(slot, ()))]
        found = found[:want]
        return [path for path, _ in found], np.asarray([value for _, value in found], dtype=np.float32)

    def embeddings(self, paths: Iterable[str]) -> tuple[list[str], np.ndarray]:
        """The stored embeddings of ``paths`` (those indexed), in the order given: (paths, [n, dim] float32)."""
        wanted, found = list(paths), {}
        with self.transaction(read=True):
            for chunk in _chunks(wanted, 500):
                marks = ",".join("?" * len(chunk))
                found.update(self.db.execute(f"SELECT path, slot FROM images WHERE path IN ({marks})", chunk))
            kept = [p for p in wanted if p in found]
            return kept, np.array(self.vectors()[[found[p] for p in kept]])

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def prune(self) -> int:
        """Drop the rows (and failures) of files that no longer exist, under any folder: how many."""
        gone = [
            p
            for (p,) in self.db.execute("SELECT path FROM images UNION ALL SELECT path FROM failures")
            if not os.path.exists(p)
        ]
        self.drop(gone)
        return len(gone)

    def stats(self) -> IndexStats:
        meta = dict(self.db.execute("SELECT key, value FROM meta"))
        failures = self.db.execute("SELECT COUNT(*) FROM failures").fetchone()[0]
        sqlite_bytes = sum(
            Path(f"{self.path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{self.path}{s}").exists()
        )
        vectors = self.vectors_path()
        vector_bytes = vectors.stat().st_size if vectors.exists() else 0
        refreshed = meta.get("refreshed_at")
        return IndexStats(
            str(self.path),
            meta.get("label", ""),
            meta.get("model", ""),
            self.dim,
            self.count(),
            failures,
            sqlite_bytes,
            vector_bytes,
            vector_bytes // self.row_bytes,
            time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(float(refreshed))) if refreshed else None,
        )


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (or a read snapshot), rolled back on any exception (KeyboardInterrupt too)."""

    def __init__(self, db: sqlite3.Connection, read: bool = False):
        self.db = db
        self.read = read

    def __enter__(self):
        self.db.execute("BEGIN" if self.read else "BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, traceback):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False


def open_existing(index_file: Path | None) -> EmbeddingIndex:
    """An index as it is, whatever its model (for --stats and --prune: no checkpoint is loaded)."""
    path = Path(index_file) if index_file else default_index_path()
    if not path.is_file():
        raise BtError(f"no index at {path}", "build one with bt index DIR, or pass --index FILE")
    try:
        with sqlite3.connect(path) as db:
            meta = dict(db.execute("SELECT key, value FROM meta"))
    except sqlite3.DatabaseError as error:
        raise BtError(f"the index {path} is corrupt ({error})", "rebuild it with --rebuild") from None
    if meta.get("schema") != SCHEMA_VERSION:
        raise BtError(f"the index {path} was written by another version of bt", "rebuild it with --rebuild")
    return EmbeddingIndex(path, meta["model"], int(meta["dim"]), label=meta.get("label"))
