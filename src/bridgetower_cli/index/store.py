"""The embedding index behind ``bt retrieve``: the catalog (SQLite, the source of truth) and the vector file.

Kill-safety: a batch's vectors are appended and on disk before the transaction that references them commits, so a
crash leaves at most unreferenced rows after the committed count, cut by the next append. Every slot is decided in
the transaction that writes it (a moved file's too), so writers and compactions interleave in any order without a
wrong or dangling slot; claims keep two writers from embedding one file. When more than half the rows are
unreferenced, the file is rewritten as the next generation and switched in one commit. Readers take a snapshot and
never wait. Integrity costs nothing per query: the header and the row count are checked on open, and the rows a
query returns are checked against their CRC-32. No torch here.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..errors import BtError, IndexDamaged, NoSpace
from ..records import IndexStats
from . import blocks
from .catalog import Catalog
from .files import FileState, RefreshPlan
from .guard import refuse_foreign
from .migrations import known_schema, schema_of, upgrade
from .search import vector_file
from .tier import files_of
from .tiered import Tiered
from .vectors import VectorFile, checksums, no_space, vector_files


class EmbeddingIndex(Tiered):
    """An open index. ``for_writing`` may create, upgrade and change it; ``for_reading`` only reads a snapshot."""

    def __init__(self, catalog: Catalog, fingerprint: str | None, dim: int | None, label: str | None):
        self.catalog, self.path = catalog, catalog.path
        meta = catalog.meta()
        if fingerprint is not None and (meta.get("model") != fingerprint or meta.get("dim") != str(dim)):
            catalog.close()
            raise BtError(
                f"the index {self.path} was built with another model or dtype ({meta.get('label')}), not {label}",
                "rebuild it with --rebuild, or keep one index per model (and --dtype) with --index FILE",
            )
        self.fingerprint, self.dim = meta["model"], int(meta["dim"])
        self.label = meta.get("label", self.fingerprint)

    @classmethod
    def for_writing(
        cls,
        path: Path,
        fingerprint: str | None,
        dim: int | None,
        rebuild: bool = False,
        label: str | None = None,
        **options,
    ) -> EmbeddingIndex:
        """Open (creating, or with ``rebuild`` starting afresh, or upgrading) the index for ``fingerprint``; None:
        an existing index, whatever its model (``--prune``, ``--repair``)."""
        refuse_foreign(Path(path))  # (what is not an index, or cannot be looked at, is said in one line first)
        if fingerprint is None and not Path(path).is_file():
            raise BtError(f"no index at {path}", "build one with bt index DIR, or pass --index FILE")
        catalog = Catalog(path, write=True, wait_s=options.get("wait_s", 60.0))
        try:
            if rebuild:
                _start_afresh(catalog)
            if schema_of(catalog) == 0:
                if fingerprint is None:
                    raise BtError(f"{path} is not a bt index (an empty catalog)", "build one with bt index DIR")
                _create(catalog, fingerprint, dim, label or fingerprint)
            upgrade(catalog)
            index = cls(catalog, fingerprint, dim, label or fingerprint)
            index._record_blocks()
        except BaseException:
            catalog.close()
            raise
        if options.get("check", True):
            index.check_quickly()
        return index

    @classmethod
    def for_reading(
        cls, path: Path, fingerprint: str | None = None, dim: int | None = None, label: str | None = None, check=True
    ) -> EmbeddingIndex:
        """Open an existing index read-only (``fingerprint`` None: whatever its model). An index of an older bt is
        upgraded first, where it can be written."""
        refuse_foreign(Path(path))  # (what is not an index, or cannot be looked at, is said in one line first)
        if not Path(path).is_file():
            raise BtError(f"no index at {path}", "build one with bt index DIR, or pass --index FILE")
        catalog = Catalog(path, write=False)
        try:
            version = known_schema(catalog)
            if version == 0:
                raise BtError(f"{path} is not a bt index (an empty catalog)", "build one with bt index DIR")
            if version < 3:
                catalog.close()
                with contextlib.closing(Catalog(path, write=True)) as writer:
                    upgrade(writer)
                catalog = Catalog(path, write=False)
            index = cls(catalog, fingerprint, dim, label)
        except BaseException:
            catalog.close()
            raise
        if check:
            index.check_quickly()
        return index

    def close(self) -> None:
        self.catalog.close()

    def _record_blocks(self) -> None:
        """(A writer's open.) An index written before checksums by block gets them for its current generation, from
        its rows as they are now (the rows' own CRC-32 still says whether they are sound: ``--check``)."""
        with self.catalog.transaction() as db:
            generation, rows = self._state()
            for half in (False, True):
                copy = vector_file(self.path, generation, self.dim, half)
                if rows and blocks.covered(db, generation, half, rows) is None and copy.rows_on_disk() >= rows:
                    with contextlib.suppress(IndexDamaged):  # (a file that is not sound: said by whoever reads it)
                        copy.check(rows)
                        blocks.record(db, generation, half, copy.matrix(rows), 0, rows)

    def __enter__(self) -> EmbeddingIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self):
        """A refresh: who writes is recorded (a busy reader names it); this writer's claims are released at the
        end, however it ends."""
        with self.catalog.transaction():
            self.catalog.set_meta(writer=f"bt (pid {os.getpid()})")
        try:
            yield self
        finally:
            with contextlib.suppress(BtError), self.catalog.transaction() as db:
                db.execute("DELETE FROM claims WHERE owner = ?", (self.catalog.owner,))
                db.execute("DELETE FROM meta WHERE key = 'writer'")

    def plan(self, files: Iterable[FileState], folders: Iterable[Path] = ()) -> RefreshPlan:
        return self.catalog.plan(files, folders)

    def link(self, files: list[tuple[FileState, str]]) -> list[str]:
        """Index files whose content is indexed already (moved, renamed, copied): the paths linked."""
        with self.catalog.transaction():
            return self.catalog.link(files)

    def drop(self, paths: list[str], folders: Iterable[Path] = (), unseen: list[str] = ()) -> None:
        """Drop the rows of files seen gone; remember those kept under ``folders`` unseen (stale)."""
        with self.catalog.transaction():
            self.catalog.drop(paths)
            self.catalog.mark_stale(folders, list(unseen))
            self.catalog.touched()

    def claim(self, files: list[FileState]) -> tuple[list[str], str | None]:
        """Claim files to embed; those another live writer is embedding, or has indexed since, are left out."""
        with self.catalog.transaction():
            return self.catalog.claim(files)

    def store(
        self,
        rows: list[tuple[FileState, str, list[float]]],
        failures: list[tuple[FileState, str]],
        taken: dict[str, int] | None = None,
    ) -> None:
        """Write a batch of embeddings (state, hash, vector) and of unreadable files: the vectors appended and on
        disk before the transaction that references them commits. ``taken``: when photos were taken (by path)."""
        with self.catalog.transaction() as db:
            generation, committed = self._state()
            if rows:
                matrix = np.asarray([vector for _, _, vector in rows], dtype=np.float32)
                vectors = vector_file(self.path, generation, self.dim)
                first = vectors.append(matrix, committed)
                end = committed + len(rows)
                blocks.record(db, generation, False, vectors.matrix(end), committed, end)
                half = vector_file(self.path, generation, self.dim, half=True)
                if half.rows_on_disk() >= committed:  # (a copy left behind stays so: searches use float32 alone)
                    half.append(matrix, committed)
                    blocks.record(db, generation, True, half.matrix(end), committed, end)
                crcs = checksums(matrix)
                self.catalog.put([(s, h, first + k, crcs[k]) for k, (s, h, _) in enumerate(rows)], taken)
                self.catalog.set_meta(rows=committed + len(rows))
            self.catalog.fail(failures)
            self.catalog.unclaim([s.path for s, _, _ in rows] + [s.path for s, _ in failures])
            self.catalog.touched()

    def maintain(self) -> str | None:
        """After a refresh: compact the vector file once more than half of it is unreferenced. A compaction that
        cannot be written (a full disk) is skipped and said so (the index stays as it was)."""
        with self.catalog.transaction() as db:
            rows = self._state()[1]
            used = db.execute("SELECT COUNT(DISTINCT slot) FROM images").fetchone()[0]
        if rows - used <= max(1024, used):
            return None
        try:
            self.compact()
        except (OSError, NoSpace) as error:
            if isinstance(error, OSError) and not no_space(error):
                raise
            return f"index: compaction skipped, no space left on {self.path.parent} ({rows - used} unused rows kept)"
        return None

    def compact(self, pause: Callable[[str], None] = lambda step: None) -> None:
        """Rewrite the vector file without unreferenced rows, as the next generation, switched in one commit.
        ``pause`` is called between steps (tests interleave other writers there)."""
        with self.catalog.transaction():  # (committed first: whoever waits meanwhile is told who holds the index)
            self.catalog.set_meta(writer=f"bt (pid {os.getpid()}), compacting it")
        try:
            with self._switching() as (db, generation):
                rows = self._state()[1]
                self._next_generation(db, generation, vector_file(self.path, generation, self.dim), rows, pause)
        finally:
            with contextlib.suppress(BtError), self.catalog.transaction() as db:
                db.execute("DELETE FROM meta WHERE key = 'writer'")
        self._drop_generations_before(generation + 1)

    @contextlib.contextmanager
    def _switching(self):
        """A write transaction that may switch to the next generation: (the connection, the current generation).
        If it does not commit (a full disk at COMMIT, an error, Ctrl-C), the next generation's files are removed:
        nothing references them."""
        current = None
        try:
            with self.catalog.transaction() as db:
                current = self._state()[0]
                yield db, current
        except BaseException:
            if current is not None:
                for half in (False, True):
                    VectorFile(self.path, current + 1, self.dim, half).path.unlink(missing_ok=True)
            raise

    def _next_generation(self, db, generation: int, old: VectorFile, rows: int, pause=lambda step: None) -> None:
        """(Inside a write transaction.) The referenced rows (of the first ``rows``) written as the next generation,
        the slots renumbered and the generation switched: published by the transaction's commit."""
        slots = [slot for (slot,) in db.execute("SELECT DISTINCT slot FROM images ORDER BY slot")]
        kept = old.rows(slots, rows)
        written = [VectorFile(self.path, generation + 1, self.dim, half) for half in (False, True)]
        for new in written:  # (on any failure ``_switching`` removes them: nothing references them yet)
            new.write_all(kept)
        pause("written")
        for new in written:
            blocks.record(db, generation + 1, new.code == 1, new.matrix(len(slots)), 0, len(slots))
        blocks.forget_before(db, generation + 1)
        db.executemany("UPDATE images SET slot = ? WHERE slot = ?", [(-1 - k, s) for k, s in enumerate(slots)])
        db.execute("UPDATE images SET slot = -1 - slot")
        self.catalog.set_meta(generation=generation + 1, rows=len(slots))

    def _drop_generations_before(self, current: int) -> None:
        """Once a new generation is committed: the older ones' files that are bt's."""
        for generation in vector_files(self.path):
            for half in (False, True):
                older = VectorFile(self.path, generation, self.dim, half)
                if generation < current and older.is_bts():
                    older.path.unlink(missing_ok=True)  # (another process may have removed it)

    def forget(self, paths: list[str], new_vector_file: bool = False) -> None:
        """(``--repair``.) Drop the rows of damaged vectors so their files are embedded again; with
        ``new_vector_file`` (the file is cut short, missing or not this index's) the rows left, all good, are copied
        into the next generation in the same transaction (none if the file is missing or foreign)."""
        with self._switching() as (db, generation):
            slots = [slot for slot, _ in self.catalog.slots_of(paths).values()]
            self.catalog.drop(paths)
            rows = self._state()[1]
            if not new_vector_file:  # (the damaged bytes stay, unreferenced: their blocks summed again as they are)
                for half in (False, True):
                    copy = vector_file(self.path, generation, self.dim, half)
                    if copy.rows_on_disk() >= rows:
                        blocks.record_slots(db, generation, half, copy.matrix(rows), slots)
            else:
                old = vector_file(self.path, generation, self.dim)
                try:
                    old.header()
                    readable = min(rows, old.rows_on_disk())
                except IndexDamaged:
                    readable = 0  # (missing or foreign: every row was damaged, and dropped above)
                self._next_generation(db, generation, old, readable)
        if new_vector_file:
            self._drop_generations_before(generation + 1)

    def copy_to_half(self) -> None:
        """(``--repair``.) Write the float16 copy again from the vectors."""
        with self.catalog.transaction() as db:
            generation, rows = self._state()
            copy = VectorFile(self.path, generation, self.dim, half=True)
            copy.write_all(self.vectors().matrix(rows))
            blocks.record(db, generation, True, copy.matrix(rows), 0, rows)

    def count(self) -> int:
        return self.catalog.count()

    def listing(self, folders: Iterable[Path]) -> list[tuple[str, int, int | None]]:
        """(path, modification time in ns, time taken in s or None) of every indexed file under ``folders``."""
        return self.catalog.listing(folders)

    def prune(self) -> int:
        """Drop the rows (and failures) of files that no longer exist, under any folder: how many."""
        rows = self.catalog.db.execute("SELECT path FROM images UNION ALL SELECT path FROM failures").fetchall()
        gone = [p for (p,) in rows if not os.path.exists(p)]
        self.drop(gone)
        return len(gone)

    def stats(self) -> IndexStats:
        meta = self.catalog.meta()
        failures = self.catalog.db.execute("SELECT COUNT(*) FROM failures").fetchone()[0]
        sizes = [Path(f"{self.path}{s}") for s in ("", "-wal")]
        vectors = self.vectors()
        refreshed = meta.get("refreshed_at")
        return IndexStats(
            index=str(self.path),
            model=meta.get("label", ""),
            fingerprint=meta.get("model", ""),
            dim=self.dim,
            images=self.count(),
            unreadable=failures,
            stale=self.catalog.stale(),
            sqlite_bytes=sum(p.stat().st_size for p in sizes if p.exists()),
            vector_bytes=vectors.path.stat().st_size if vectors.path.exists() else 0,
            vector_rows=vectors.rows_on_disk(),
            last_refresh=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(float(refreshed))) if refreshed else None,
            **self.tier_stats(),
        )


def _create(catalog: Catalog, fingerprint: str, dim: int, label: str) -> None:
    """A new index: the catalog and its (empty) vector files in one write transaction, so that a process that sees
    the catalog sees the files; if another process created it first, nothing is done."""
    with catalog.transaction():
        if schema_of(catalog) != 0:
            return
        catalog.create(fingerprint, dim, label)
        for half in (False, True):
            VectorFile(catalog.path, 0, dim, half).create()


def _start_afresh(catalog: Catalog) -> None:
    """``--rebuild``: empty a bt index in place (the catalog was checked to be a bt index when it was opened). Its
    vector files go too: those with bt's header, and the current generation's (an older bt's, headerless); a
    catalog too damaged to empty is deleted whole: its header says it is bt's."""
    meta = catalog.meta()
    current = meta.get("generation")
    dim = int(meta.get("dim", "1"))
    try:
        with catalog.transaction() as db:
            for table in ("images", "failures", "claims", "meta"):
                db.execute(f"DROP TABLE IF EXISTS {table}")
        catalog.db.execute("VACUUM")
    except IndexDamaged:
        catalog.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{catalog.path}{suffix}").unlink(missing_ok=True)
        catalog.__init__(catalog.path, write=True, wait_s=catalog.wait_s)
    for tier in files_of(catalog.path):
        tier.unlink(missing_ok=True)
    for generation, path in vector_files(catalog.path).items():
        if VectorFile(catalog.path, generation, dim).is_bts() or str(generation) == current:
            path.unlink(missing_ok=True)
        half = VectorFile(catalog.path, generation, dim, half=True)
        if half.is_bts():
            half.path.unlink(missing_ok=True)
