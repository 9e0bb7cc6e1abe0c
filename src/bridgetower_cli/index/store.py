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

from ..errors import BtError, IndexDamaged
from ..records import IndexCheck, IndexStats
from .catalog import Catalog
from .files import FileState, RefreshPlan, under
from .migrations import known_schema, schema_of, upgrade
from .vectors import VectorFile, checksum, checksums, no_space, vector_files

REPAIR = "bt index --repair re-embeds exactly the damaged rows (--check lists them)"
_MAPS: dict[tuple[str, int], tuple[int, VectorFile]] = {}  # the vector files mapped in this process, by generation


def _vector_file(index: Path, generation: int, dim: int) -> VectorFile:
    """One generation's vector file, its memory map kept for the life of the process (re-made if the file was
    replaced, as a rebuild does)."""
    key = (str(index), generation)
    try:
        inode = os.stat(f"{index}.vectors-{generation}").st_ino
    except OSError:
        inode = -1
    cached = _MAPS.get(key)
    if cached is None or cached[0] != inode or cached[1].dim != dim:
        for stale in [k for k in _MAPS if k[0] == key[0]]:  # one generation mapped per index: no leak of old ones
            del _MAPS[stale]
        _MAPS[key] = (inode, VectorFile(index, generation, dim))
    return _MAPS[key][1]


class EmbeddingIndex:
    """An open index. ``for_writing`` may create, upgrade and change it; ``for_reading`` only reads a snapshot."""

    def __init__(self, catalog: Catalog, fingerprint: str | None, dim: int | None, label: str | None):
        self.catalog, self.path = catalog, catalog.path
        meta = catalog.meta()
        if fingerprint is not None and (meta.get("model") != fingerprint or meta.get("dim") != str(dim)):
            catalog.close()
            raise BtError(
                f"the index {self.path} was built with another model ({meta.get('label')}), not {label}",
                "rebuild it with --rebuild, or keep one index per model with --index FILE",
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
        if fingerprint is None and not Path(path).is_file():
            raise BtError(f"no index at {path}", "build one with bt index DIR, or pass --index FILE")
        catalog = Catalog(path, write=True, wait_s=options.get("wait_s", 60.0))
        try:
            if rebuild:
                _start_afresh(catalog)
            if schema_of(catalog) == 0:
                if fingerprint is None:
                    raise BtError(f"{path} is not a bt index (an empty catalog)", "build one with bt index DIR")
                with catalog.transaction():
                    catalog.create(fingerprint, dim, label or fingerprint)
                VectorFile(catalog.path, 0, dim).create()
            upgrade(catalog)
            index = cls(catalog, fingerprint, dim, label or fingerprint)
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

    def __enter__(self) -> EmbeddingIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state ------------------------------------------------------------------------------------------------

    def _state(self) -> tuple[int, int]:
        """(generation, committed rows), as of the transaction in progress."""
        meta = self.catalog.meta()
        return int(meta.get("generation", "0")), int(meta.get("rows", "0"))

    def vectors(self) -> VectorFile:
        return _vector_file(self.path, self._state()[0], self.dim)

    def check_quickly(self) -> None:
        """O(1): the vector file is this index's and holds every row the catalog references."""
        with self.catalog.transaction():
            generation, rows = self._state()
            try:
                _vector_file(self.path, generation, self.dim).check(rows)
            except IndexDamaged as damage:
                raise IndexDamaged(f"the index {self.path} is damaged: {damage.message}", REPAIR) from None

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

    def drop(self, paths: list[str]) -> None:
        with self.catalog.transaction():
            self.catalog.drop(paths)
            self.catalog.touched()

    def claim(self, files: list[FileState]) -> tuple[list[str], str | None]:
        """Claim files to embed; those another live writer is embedding, or has indexed since, are left out."""
        with self.catalog.transaction():
            return self.catalog.claim(files)

    def store(self, rows: list[tuple[FileState, str, list[float]]], failures: list[tuple[FileState, str]]) -> None:
        """Write a batch of embeddings (state, hash, vector) and of unreadable files: the vectors appended and on
        disk before the transaction that references them commits."""
        with self.catalog.transaction():
            generation, committed = self._state()
            if rows:
                matrix = np.asarray([vector for _, _, vector in rows], dtype=np.float32)
                first = _vector_file(self.path, generation, self.dim).append(matrix, committed)
                crcs = checksums(matrix)
                self.catalog.put([(s, h, first + k, crcs[k]) for k, (s, h, _) in enumerate(rows)])
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
        except OSError as error:
            if not no_space(error):
                raise
            return f"index: compaction skipped, no space left on {self.path.parent} ({rows - used} unused rows kept)"
        return None

    def compact(self, pause: Callable[[str], None] = lambda step: None) -> None:
        """Rewrite the vector file without unreferenced rows, as the next generation, switched in one commit.
        ``pause`` is called between steps (tests interleave other writers there)."""
        with self.catalog.transaction() as db:
            generation, rows = self._state()
            old = _vector_file(self.path, generation, self.dim)
            slots = [slot for (slot,) in db.execute("SELECT DISTINCT slot FROM images ORDER BY slot")]
            new = VectorFile(self.path, generation + 1, self.dim)
            new.write_all(old.rows(slots, rows))
            pause("written")
            db.executemany("UPDATE images SET slot = ? WHERE slot = ?", [(-1 - k, s) for k, s in enumerate(slots)])
            db.execute("UPDATE images SET slot = -1 - slot")
            self.catalog.set_meta(generation=generation + 1, rows=len(slots))
        old.path.unlink(missing_ok=True)

    def forget(self, paths: list[str], new_vector_file: bool = False) -> None:
        """(``--repair``.) Drop the rows of damaged vectors so their files are embedded again; with
        ``new_vector_file`` (the file is missing or not this index's) start a new generation of it."""
        with self.catalog.transaction():
            self.catalog.drop(paths)
            if new_vector_file:
                generation = self._state()[0] + 1
                VectorFile(self.path, generation, self.dim).create()
                self.catalog.set_meta(generation=generation, rows=0)

    # -- reading ----------------------------------------------------------------------------------------------

    def _snapshot(self, read: Callable[[VectorFile, int], object]):
        """``read(vector file, committed rows)`` in one read snapshot; if a compaction removed the snapshot's
        file meanwhile, again on the next."""
        for attempt in range(3):
            try:
                with self.catalog.transaction():
                    generation, rows = self._state()
                    vectors = _vector_file(self.path, generation, self.dim)
                    vectors.check(rows)
                    return read(vectors, rows)
            except IndexDamaged as damage:
                if attempt == 2 or "is missing" not in damage.message:
                    raise IndexDamaged(f"the index {self.path} is damaged: {damage.message}", REPAIR) from None
        raise AssertionError("unreachable")

    def search(
        self, query: np.ndarray, want: int, folders: Iterable[Path] = (), files: Iterable[str] = ()
    ) -> tuple[list[str], np.ndarray]:
        """The ``want`` indexed images most similar to ``query`` (exact float32 cosines, best first) among those
        under ``folders`` and the ``files`` named: one pass over the vectors, and only the best slots looked up."""
        ranges, files = under(folders), set(files)

        def read(vectors: VectorFile, rows: int):
            matrix = vectors.matrix(rows)
            with np.errstate(all="ignore"):
                similarities = matrix @ np.asarray(query, dtype=np.float32)
            self._refuse_damaged_similarities(similarities)
            found = self._best(
                similarities, want, lambda path: path in files or any(lo <= path < hi for lo, hi in ranges)
            )
            self._verify(matrix, [(slot, crc) for _, slot, crc, _ in found])
            return [path for path, _, _, _ in found], np.asarray([s for _, _, _, s in found], dtype=np.float32)

        return self._snapshot(read)

    def _refuse_damaged_similarities(self, similarities: np.ndarray) -> None:
        """Non-finite or out-of-range similarities are damage when a row references them (unreferenced rows past a
        crash are only ignored)."""
        bad = np.flatnonzero(~np.isfinite(similarities) | (np.abs(similarities) > 1.001))
        if len(bad):
            if any(True for _ in self.catalog.paths_at(bad.tolist())):
                raise IndexDamaged(f"the index {self.path} is damaged: some vectors are not embeddings", REPAIR)
            similarities[bad] = -np.inf

    def _best(self, similarities: np.ndarray, want: int, wanted: Callable[[str], bool]) -> list:
        """(path, slot, checksum, similarity) of the ``want`` best wanted rows, without sorting every row."""
        order = np.argsort(-similarities, kind="stable") if len(similarities) <= 4 * want else None
        found: list = []
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
            by_slot: dict[int, list] = {}
            for path, slot, crc in self.catalog.paths_at(block.tolist()):
                if wanted(path):
                    by_slot.setdefault(slot, []).append((path, crc))
            for slot in block.tolist():
                found += [(p, slot, c, float(similarities[slot])) for p, c in sorted(by_slot.get(slot, ()))]
        return found[:want]

    def _verify(self, matrix: np.ndarray, rows: list[tuple[int, int]]) -> None:
        damaged = [slot for slot, crc in rows if checksum(matrix[slot]) != crc]
        if damaged:
            raise IndexDamaged(
                f"the index {self.path} is damaged: {len(damaged)} of the vectors found do not match their checksums",
                REPAIR,
            )

    def embeddings(self, paths: Iterable[str]) -> tuple[list[str], np.ndarray]:
        """The stored embeddings of ``paths`` (those indexed), in the order given: (paths, [n, dim] float32)."""
        wanted = list(paths)

        def read(vectors: VectorFile, rows: int):
            found = self.catalog.slots_of(wanted)
            kept = [p for p in wanted if p in found]
            matrix = vectors.matrix(rows)
            self._verify(matrix, [found[p] for p in kept])
            return kept, vectors.rows([found[p][0] for p in kept], rows)

        return self._snapshot(read)

    def verify(self, progress: Callable[[int], None] = lambda n: None) -> IndexCheck:
        """Check everything (``bt index --check``): the catalog (SQLite's quick_check), the vector file's header
        and length, and each row: in range, finite, of unit length, matching its checksum."""
        catalog = self.catalog.db.execute("PRAGMA quick_check").fetchone()[0]
        with self.catalog.transaction() as db:
            generation, rows = self._state()
            vectors = _vector_file(self.path, generation, self.dim)
            try:
                vectors.header()
                usable, problem = min(rows, vectors.rows_on_disk()), "ok"
            except IndexDamaged as damage:
                usable, problem = 0, damage.message
            matrix = vectors.matrix(usable) if usable else None
            damaged, total = [], self.catalog.count()
            cursor = db.execute("SELECT path, slot, checksum FROM images ORDER BY slot")
            while block := cursor.fetchmany(4096):
                for path, slot, crc in block:
                    if matrix is None or not 0 <= slot < usable or not _sound(matrix[slot], crc):
                        damaged.append(path)
                progress(len(block))
        if problem == "ok" and vectors.rows_on_disk() < rows:
            problem = f"it holds {vectors.rows_on_disk()} rows where the catalog references {rows}"
        return IndexCheck(str(self.path), total, len(damaged), problem, catalog, damaged)

    def count(self) -> int:
        return self.catalog.count()

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
            sqlite_bytes=sum(p.stat().st_size for p in sizes if p.exists()),
            vector_bytes=vectors.path.stat().st_size if vectors.path.exists() else 0,
            vector_rows=vectors.rows_on_disk(),
            last_refresh=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(float(refreshed))) if refreshed else None,
        )


def _sound(row: np.ndarray, crc: int) -> bool:
    """A stored embedding as written: its checksum, finite, of unit length (L2-normalised; bf16 runs within 5 %)."""
    with np.errstate(all="ignore"):
        return checksum(row) == crc and bool(np.isfinite(row).all()) and abs(float(np.linalg.norm(row)) - 1) < 0.05


def _start_afresh(catalog: Catalog) -> None:
    """``--rebuild``: empty a bt index in place (the catalog was checked to be a bt index when it was opened), its
    own vector files (matched by exact name) deleted. A catalog too damaged to empty is deleted whole: its header
    says it is bt's."""
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
    for path in vector_files(catalog.path).values():
        path.unlink(missing_ok=True)
