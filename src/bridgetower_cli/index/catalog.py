"""The catalog of an index: the SQLite file, the source of truth. Per image its absolute path, size, mtime, content
hash, the slot of its embedding in the vector file and that row's CRC-32; unreadable files and why; files a writer is
embedding (claims); the model, dimension, generation and committed row count (meta).

Readers open it read-only (a WAL snapshot: they never wait for a writer, and work on a read-only file system);
writers take SQLite's write lock per transaction, waiting at most ``wait_s`` and then reporting the index busy (and
who holds it), never damaged. Only a file that is a bt index is ever opened: bt's application id in the SQLite
header, or (before it) bt's meta table."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import BtError, Busy, IndexDamaged, NoSpace
from . import blocks
from .files import FileState, RefreshPlan, chunks, under
from .guard import APPLICATION_ID, FOREIGN_HINT, refuse_foreign

SCHEMA_VERSION = 4
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL,
    slot INTEGER NOT NULL,
    checksum INTEGER NOT NULL,
    taken INTEGER
);
CREATE INDEX IF NOT EXISTS images_by_hash ON images (hash);
CREATE INDEX IF NOT EXISTS images_by_slot ON images (slot);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (path TEXT PRIMARY KEY, owner TEXT NOT NULL);
"""
SCHEMA += blocks.TABLE + ";\n"  # (checksums by block of the vectors: index/blocks.py)


_writers = itertools.count()


def _nearly_full(path: Path) -> bool:
    """Whether the file system holding ``path`` has (almost) no room left: SQLite says "disk I/O error" then."""
    try:
        found = os.statvfs(path.parent)
    except OSError:
        return False
    return found.f_bavail * found.f_frsize < 2**20


def _has_content(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _sight(path: str) -> str:
    """ "gone" (known to be gone, or a link to nothing), "unseen" (out of sight: under a folder that cannot be listed
    now, its row stays, stale) or "there"."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return "gone"
    except OSError:
        return "unseen"
    return "there"


def alive(claimant: str) -> bool:
    """Whether the writer of a claim (``host:pid:n``) still runs; a claim from another host is taken as alive."""
    host, pid, _ = (claimant.split(":") + ["", ""])[:3]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Catalog:
    """An open catalog: ``write`` False opens it read-only (never creating, migrating or locking anything)."""

    def __init__(self, path: Path, write: bool, wait_s: float = 60.0):
        self.path, self.write, self.wait_s = Path(path), write, wait_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{next(_writers)}"  # whose claims are whose
        refuse_foreign(self.path)
        if write and not _has_content(self.path):
            for journal in (Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
                if journal.exists() or journal.is_symlink():
                    raise BtError(f"{journal} exists without its index: not bt's", FOREIGN_HINT)
        try:
            if write:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, timeout=wait_s, isolation_level=None, check_same_thread=False)
                self.db.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
                if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # (kept in the file once set)
                    self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
            else:
                self.db = self._read_only()
        except sqlite3.DatabaseError as error:
            raise self.failure(error) from None
        except OSError as error:
            raise BtError(
                f"cannot create the index {self.path}: {error.strerror or error}",
                "pass --index FILE on a writable path",
            ) from None

    def _read_only(self) -> sqlite3.Connection:
        """A read-only connection that writes nothing. Where no -shm can be made (a folder or a medium this user
        cannot write), the file alone, opened immutable, if no journal holds changes beyond it; a journal that does
        (a -wal with content) is refused in one line, never read past."""
        try:
            return self._connected("mode=ro")
        except sqlite3.OperationalError as error:
            if "unable to open" not in str(error) and "readonly" not in str(error):
                raise
        if _has_content(Path(f"{self.path}-wal")):
            raise BtError(
                f"the index {self.path} has changes in its journal ({self.path.name}-wal) that this user cannot read "
                "without writing beside it",
                "open it once as a user who can write its folder (or copy the folder somewhere writable)",
            )
        return self._connected("immutable=1")

    def _connected(self, mode: str) -> sqlite3.Connection:
        db = sqlite3.connect(f"file:{self.path}?{mode}", uri=True, isolation_level=None, check_same_thread=False)
        try:
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except BaseException:
            db.close()
            raise
        return db

    def failure(self, error: sqlite3.DatabaseError) -> BtError:
        """A SQLite error as what it means here: busy, read-only, full, or damaged."""
        text = str(error)
        if "locked" in text or "busy" in text:
            holder = self.meta().get("writer") or "another bt process"
            return Busy(
                f"the index {self.path} is busy: {holder} is writing it",
                f"wait for it to finish, or wait longer with --wait SECONDS (now {self.wait_s:g})",
            )
        if "readonly" in text or "unable to open" in text:
            return BtError(f"cannot write the index {self.path}: {text}", "pass --index FILE on a writable path")
        if "full" in text or "disk I/O error" in text and _nearly_full(self.path):
            return NoSpace(f"no space left for the index {self.path}", "free some space, then run again")
        if "disk I/O error" in text:
            return BtError(f"the disk failed to read or write the index {self.path} ({text})", "check the disk")
        return IndexDamaged(
            f"the index {self.path} is damaged ({text})",
            "rebuild it with --rebuild (its catalog itself is damaged: --repair cannot mend that)",
        )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (a read snapshot for readers), rolled back on any exception (Ctrl-C too);
        SQLite's own errors become bt's (busy, full, damaged)."""
        try:
            self.db.execute("BEGIN IMMEDIATE" if self.write else "BEGIN")
        except sqlite3.DatabaseError as error:
            raise self.failure(error) from None
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException as failure:
            if self.db.in_transaction:  # (SQLite rolls a transaction back itself on some errors: a full disk)
                self.db.execute("ROLLBACK")
            if isinstance(failure, sqlite3.DatabaseError):
                raise self.failure(failure) from None
            raise

    def close(self) -> None:
        self.db.close()

    # -- meta -------------------------------------------------------------------------------------------------

    def tables(self) -> set[str]:
        return {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def meta(self) -> dict[str, str]:
        try:
            return dict(self.db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError:
            return {}

    def set_meta(self, **values) -> None:
        """(Inside a write transaction.)"""
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in values.items()])

    def create(self, fingerprint: str, dim: int, label: str) -> None:
        """(Inside a write transaction.) A new, empty index of the current schema."""
        for statement in SCHEMA.strip().split(";"):
            if statement.strip():
                self.db.execute(statement)
        self.db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        self.set_meta(schema=SCHEMA_VERSION, model=fingerprint, dim=dim, label=label, generation=0, rows=0)

    # -- planning a refresh -----------------------------------------------------------------------------------

    def plan(self, files: Iterable[FileState], folders: Iterable[Path] = ()) -> RefreshPlan:
        """Compare files on disk with the catalog; rows under ``folders`` whose file is seen gone are to be
        dropped (one out of sight, or still there but no longer an image file found by the walk, stays)."""
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
        for chunk in chunks(outside, 400):
            marks = ",".join("?" * len(chunk))
            known.update((p, (s, m)) for p, s, m in self.db.execute(query.format(f"path IN ({marks})"), chunk + chunk))
        to_embed, changed = [], set()
        for state in files:
            stamp = known.get(state.path)
            if stamp != (state.size, state.mtime_ns):
                to_embed.append(state)
                if stamp is not None:
                    changed.add(state.path)
        present = {state.path for state in files}
        sight = {p: _sight(p) for p in known if p not in present and inside(p)} if ranges else {}
        to_drop = [p for p, seen in sight.items() if seen == "gone"]
        unseen = [p for p, seen in sight.items() if seen == "unseen"]
        return RefreshPlan(to_embed, to_drop, len(files) - len(to_embed), changed, unseen)

    def mark_stale(self, folders: Iterable[Path], unseen: list[str]) -> None:
        """(Inside a write transaction.) Remember the rows a refresh of ``folders`` kept without seeing their file
        (by folder, in meta ``stale``): what it saw under them replaces what an earlier refresh remembered."""
        ranges = under(folders)
        stale = {
            folder: count
            for folder, count in json.loads(self.meta().get("stale") or "{}").items()
            if not any(low <= os.path.join(folder, "") < high for low, high in ranges)
        }
        for path in unseen:
            folder = os.path.dirname(path)
            stale[folder] = stale.get(folder, 0) + 1
        self.set_meta(stale=json.dumps(stale, sort_keys=True))

    def stale(self) -> int:
        """The rows kept by the last refreshes though their folder could not be read (``mark_stale``)."""
        return sum(json.loads(self.meta().get("stale") or "{}").values())

    # -- claims: no two writers embed one file ---------------------------------------------------------------

    def claim(self, files: list[FileState]) -> tuple[list[str], str | None]:
        """(Inside a write transaction.) Claim the files to embed that no live writer has claimed and none has indexed
        since they were planned: (the paths claimed now, the owner of a claim held elsewhere)."""
        me, taken, elsewhere = self.owner, [], None
        for chunk in chunks(files, 500):
            paths = [state.path for state in chunk]
            marks = ",".join("?" * len(chunk))
            held = dict(self.db.execute(f"SELECT path, owner FROM claims WHERE path IN ({marks})", paths))
            query = f"SELECT path, size, mtime_ns FROM images WHERE path IN ({marks})"
            done = {(p, s, m) for p, s, m in self.db.execute(query, paths)}
            for state in chunk:
                holder = held.get(state.path)
                if holder is not None and holder != me and alive(holder):
                    elsewhere = elsewhere or holder
                elif tuple(state) not in done:
                    taken.append(state.path)
        self.db.executemany("INSERT OR REPLACE INTO claims VALUES (?, ?)", [(p, me) for p in taken])
        return taken, elsewhere

    def unclaim(self, paths: Iterable[str]) -> None:
        """(Inside a write transaction.)"""
        self.db.executemany("DELETE FROM claims WHERE path = ? AND owner = ?", [(p, self.owner) for p in paths])

    # -- rows -------------------------------------------------------------------------------------------------

    def put(self, rows: list[tuple[FileState, str, int, int]], taken: dict[str, int] | None = None) -> None:
        """(Inside a write transaction.) Index files: (state, hash, slot, checksum), and when each photo was taken
        (``taken``, by path: seconds, as its EXIF says; unknown: none)."""
        taken = taken or {}
        self.db.executemany(
            "INSERT OR REPLACE INTO images (path, size, mtime_ns, hash, slot, checksum, taken) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(s.path, s.size, s.mtime_ns, digest, slot, crc, taken.get(s.path)) for s, digest, slot, crc in rows],
        )
        self.db.executemany("DELETE FROM failures WHERE path = ?", [(s.path,) for s, _, _, _ in rows])

    def link(self, files: list[tuple[FileState, str]]) -> list[str]:
        """(Inside a write transaction.) Index files whose content is indexed already under another path: the slot
        and checksum read in the same transaction that writes them. The paths linked."""
        linked = []
        for state, digest in files:
            query = "SELECT slot, checksum, taken FROM images WHERE hash = ? LIMIT 1"
            found = self.db.execute(query, (digest,)).fetchone()
            if found is not None and digest:  # (the same bytes: the same EXIF date too)
                self.put([(state, digest, found[0], found[1])], {state.path: found[2]})
                linked.append(state.path)
        return linked

    def fail(self, failures: list[tuple[FileState, str]]) -> None:
        """(Inside a write transaction.)"""
        self.db.executemany(
            "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)",
            [(s.path, s.size, s.mtime_ns, reason) for s, reason in failures],
        )
        self.db.executemany("DELETE FROM images WHERE path = ?", [(s.path,) for s, _ in failures])

    def drop(self, paths: list[str]) -> None:
        """(Inside a write transaction.)"""
        self.db.executemany("DELETE FROM images WHERE path = ?", [(p,) for p in paths])
        self.db.executemany("DELETE FROM failures WHERE path = ?", [(p,) for p in paths])

    def paths_at(self, slots: list[int]) -> Iterator[tuple[str, int, int]]:
        """(path, slot, checksum) of the rows at these slots."""
        for chunk in chunks(slots, 500):
            marks = ",".join("?" * len(chunk))
            yield from self.db.execute(f"SELECT path, slot, checksum FROM images WHERE slot IN ({marks})", chunk)

    def slots_of(self, paths: list[str]) -> dict[str, tuple[int, int]]:
        """path -> (slot, checksum) of the paths indexed."""
        found = {}
        for chunk in chunks(paths, 500):
            marks = ",".join("?" * len(chunk))
            query = f"SELECT path, slot, checksum FROM images WHERE path IN ({marks})"
            found.update((p, (s, c)) for p, s, c in self.db.execute(query, chunk))
        return found

    def listing(self, folders: Iterable[Path]) -> list[tuple[str, int, int | None]]:
        """(path, modification time in ns, time taken in s or None) of every indexed file under ``folders``, in path
        order."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(images)")}
        taken = "taken" if "taken" in columns else "NULL"  # (a schema 3 index, read where it cannot be upgraded)
        query = f"SELECT path, mtime_ns, {taken} FROM images WHERE path >= ? AND path < ? ORDER BY path"
        return [row for low, high in under(folders) for row in self.db.execute(query, (low, high))]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def touched(self) -> None:
        """(Inside a write transaction.) When the index last changed."""
        self.set_meta(refreshed_at=time.time())
