"""Reading an index: exact search, stored embeddings, and the full check — each in one read snapshot.

A search multiplies the whole vector file by the query and looks up only the best slots in SQLite. At scale (and
when torch is loaded, as it is beside a model) the first pass runs over the float16 copy (half the bytes to read),
then every row that could be in the top k — within a margin larger than float16's worst rounding of a cosine —
is scored again in float32: the hits and their similarities are the float32 ones."""

from __future__ import annotations

import os
import sqlite3
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..errors import IndexDamaged
from ..records import IndexCheck
from . import blocks
from .catalog import Catalog
from .files import under
from .vectors import VectorFile, checksum

REPAIR = "bt index --repair re-embeds exactly the damaged rows (--check lists them)"
HALF_FROM = 65536  # rows from which the float16 first pass pays
# |fp16(q).fp16(v) - q.v| <= |q||v| (2 * 2**-11 + 2**-22) for the inputs' rounding, plus half an fp16 ulp of the
# result (torch accumulates in float32): under 1.3e-3 for unit vectors. Three times that, for every row.
MARGIN = 4e-3
_MAPS: dict[tuple[str, int, bool], tuple[int, VectorFile]] = {}  # the vector files mapped in this process


def vector_file(index: Path, generation: int, dim: int, half: bool = False) -> VectorFile:
    """One generation's vector file (or its float16 copy), its memory map kept for the life of the process (made
    anew if the file was replaced, as a rebuild does)."""
    probe = VectorFile(index, generation, dim, half)
    key = (str(index), generation, half)
    try:
        inode = os.stat(probe.path).st_ino
    except OSError:
        inode = -1
    cached = _MAPS.get(key)
    if cached is None or cached[0] != inode or cached[1].dim != dim:
        for stale in [k for k in _MAPS if k[0] == key[0] and k[2] == half]:  # one generation per index: no leak
            del _MAPS[stale]
        _MAPS[key] = (inode, probe)
    return _MAPS[key][1]


class Reading:
    """What an open index reads (``EmbeddingIndex`` is one)."""

    catalog: Catalog
    path: Path
    dim: int

    def _state(self) -> tuple[int, int]:
        """(generation, committed rows), as of the transaction in progress."""
        meta = self.catalog.meta()
        return int(meta.get("generation", "0")), int(meta.get("rows", "0"))

    def vectors(self, half: bool = False) -> VectorFile:
        return vector_file(self.path, self._state()[0], self.dim, half)

    def check_quickly(self) -> None:
        """O(1): the vector file is this index's and holds every row the catalog references."""
        with self.catalog.transaction():
            generation, rows = self._state()
            try:
                vector_file(self.path, generation, self.dim).check(rows)
            except IndexDamaged as damage:
                raise IndexDamaged(f"the index {self.path} is damaged: {damage.message}", REPAIR) from None

    def _snapshot(self, read: Callable[[VectorFile, int], object]):
        """``read(vector file, committed rows)`` in one read snapshot; if a compaction removed the snapshot's
        file meanwhile, again on the next."""
        for attempt in range(3):
            try:
                with self.catalog.transaction():
                    generation, rows = self._state()
                    vectors = vector_file(self.path, generation, self.dim)
                    vectors.check(rows)
                    return read(vectors, rows)
            except IndexDamaged as damage:
                if attempt < 2 and "is missing" in damage.message:
                    continue  # (a compaction switched generations: the next snapshot has the new file)
                if damage.message.startswith("the index "):
                    raise  # (said whole already: never "is damaged: the index … is damaged")
                raise IndexDamaged(f"the index {self.path} is damaged: {damage.message}", REPAIR) from None
        raise AssertionError("unreachable")

    # -- search -----------------------------------------------------------------------------------------------

    def search(
        self,
        query: np.ndarray,
        want: int,
        folders: Iterable[Path] = (),
        files: Iterable[str] = (),
        exact: bool = False,
    ) -> tuple[list[str], np.ndarray]:
        """The ``want`` indexed images most similar to ``query`` (float32 cosines, best first) among those under
        ``folders`` and the ``files`` named: over the approximate tier where the index has one (every candidate
        scored in float32), unless ``exact``."""
        ranges, files = under(folders), set(files)
        query = np.asarray(query, dtype=np.float32)

        def wanted(path: str) -> bool:
            return path in files or any(low <= path < high for low, high in ranges)

        def read(vectors: VectorFile, rows: int):
            usable = None if exact else self._usable_tier(self._state()[0], rows)
            found = self._approximate(usable, vectors, vectors.matrix(rows), query, want, wanted) if usable else None
            if found is not None:
                return [path for path, _, _, _ in found], np.asarray([s for _, _, _, s in found], dtype=np.float32)
            # Every row the ranking reads is checked first, so a lowered score is never left out unseen: the
            # float32 file by its blocks, or (the float16 first pass) the copy by its blocks and each float32 row
            # rescored by its CRC-32 (a sound copy's score is within MARGIN of the row's, so no other row can rank).
            matrix, half = vectors.matrix(rows), self._half_copy(rows)
            damaged = self._damaged_blocks(vectors, matrix) if half is None else []
            if damaged:
                raise IndexDamaged(
                    f"the index {self.path} is damaged: {len(damaged)} blocks of its vectors do not match their "
                    "checksums",
                    REPAIR,
                )
            with np.errstate(all="ignore"):
                similarities = matrix @ query if half is None else _half_scores(half.matrix(rows), query)
            self._refuse_damaged_similarities(similarities)
            found = self._best(similarities, want, wanted)
            if half is not None:
                found = self._rescored(found, similarities, matrix, query, want, wanted)
            self._verify(matrix, [(slot, crc) for _, slot, crc, _ in found])
            return [path for path, _, _, _ in found], np.asarray([s for _, _, _, s in found], dtype=np.float32)

        return self._snapshot(read)

    # (An index with an approximate tier, ``tiered.py``, says here when a search may use it, whether it replaces
    # the float16 copy, and what is wrong with it.)

    def _usable_tier(self, generation: int, rows: int):
        return None

    def _tier_of(self, generation: int):
        return None

    def _tier_problem(self, generation: int) -> str:
        return ""

    def _half_copy(self, rows: int) -> VectorFile | None:
        """The float16 copy, when it pays and can be used: torch loaded, enough rows, and the copy whole."""
        if rows < HALF_FROM or "torch" not in sys.modules:
            return None
        half = vector_file(self.path, self._state()[0], self.dim, half=True)
        try:
            half.check(rows)
        except IndexDamaged:  # (a cache: without it the search is the float32 pass)
            return None
        return half if self._damaged_blocks(half, half.matrix(rows)) == [] else None  # (checked, and sound)

    def _damaged_blocks(self, copy: VectorFile, matrix: np.ndarray, first: int = 0) -> list[int] | None:
        """The blocks of ``copy`` (its first rows, ``matrix``) from block ``first`` on that do not match their
        checksums; None where none are recorded yet (an index written before them: its hits' CRC-32 are still
        checked, and its next writer records them)."""
        generation = self._state()[0]
        recorded = blocks.covered(self.catalog.db, generation, copy.code == 1, len(matrix))
        if recorded is None:
            return None
        key = (str(self.path), generation, copy.code)
        return blocks.damaged_blocks(copy.path, recorded, matrix, key, first)

    def _rescored(self, found: list, approximate: np.ndarray, matrix, query, want: int, wanted) -> list:
        """The exact top ``want``: every wanted row whose float16 score lies within MARGIN of the ``want``-th
        best's, scored in float32 and ranked as the float32 pass ranks (ties by slot, then path)."""
        threshold = found[-1][3] - MARGIN if len(found) == want else -np.inf
        slots = np.flatnonzero(approximate >= threshold)
        exact = dict(zip(slots.tolist(), (matrix[slots] @ query).tolist()))
        rows = [(path, slot, crc) for path, slot, crc in self.catalog.paths_at(slots.tolist()) if wanted(path)]
        self._verify(matrix, [(slot, crc) for _, slot, crc in rows])  # (each row rescored, not only those returned)
        rows.sort(key=lambda row: (-exact[row[1]], row[1], row[0]))
        return [(path, slot, crc, exact[slot]) for path, slot, crc in rows[:want]]

    def _refuse_damaged_similarities(self, similarities: np.ndarray) -> None:
        """Non-finite or out-of-range similarities are damage when a row references them (unreferenced rows past a
        crash are only ignored)."""
        bad = np.flatnonzero(~np.isfinite(similarities) | (np.abs(similarities) > 1.01))
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
                block = part[np.lexsort((part, -similarities[part]))][start:bound]  # (ties: by slot)
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
            self._verify(vectors.matrix(rows), [found[p] for p in kept])
            return kept, vectors.rows([found[p][0] for p in kept], rows)

        return self._snapshot(read)

    # -- the full check ---------------------------------------------------------------------------------------

    def verify(self, progress: Callable[[int], None] = lambda n: None) -> IndexCheck:
        """Check everything (``bt index --check``): the catalog (SQLite's quick_check), the vector file's header
        and length, and each row: in range, finite, of unit length, matching its checksum, its float16 copy the
        row rounded."""
        try:
            catalog = self.catalog.db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as error:  # (SQLite cannot even check it: garbage in its pages)
            catalog = str(error)
        if catalog != "ok":  # (its rows cannot be trusted, nor read: only a rebuild mends the catalog)
            return IndexCheck(str(self.path), 0, 0, "not checked", catalog, [], "rebuild")
        with self.catalog.transaction() as db, np.errstate(all="ignore"):
            generation, rows = self._state()
            vectors = vector_file(self.path, generation, self.dim)
            try:
                vectors.header()
                usable, problem = min(rows, vectors.rows_on_disk()), "ok"
            except IndexDamaged as damage:
                usable, problem = 0, damage.message
            matrix = vectors.matrix(usable) if usable else None
            half, half_problem = self._half_rows(generation, rows) if not self._tier_of(generation) else (None, "")
            damaged, mismatched, total = [], 0, self.catalog.count()
            cursor = db.execute("SELECT path, slot, checksum FROM images ORDER BY slot")
            while block := cursor.fetchmany(4096):
                for path, slot, crc in block:
                    if matrix is None or not 0 <= slot < usable or not _sound(matrix[slot], crc):
                        damaged.append(path)
                    elif half is not None and not np.array_equal(half[slot], matrix[slot].astype(np.float16)):
                        mismatched += 1
                progress(len(block))
        half_only = False
        if problem == "ok" and vectors.rows_on_disk() < rows:
            problem = f"it holds {vectors.rows_on_disk()} rows where the catalog references {rows}"
        if problem == "ok" and (half_problem or mismatched):
            problem, half_only = f"its float16 copy {half_problem or f'differs from {mismatched} of its rows'}", True
        tier_only = problem == "ok" and bool(tier_problem := self._tier_problem(generation))
        problem = tier_problem if tier_only else problem
        repair = (
            "rebuild" if catalog != "ok"
            else "float16 copy" if half_only
            else "tier" if tier_only
            else "new vector file" if problem != "ok"
            else "re-embed" if damaged
            else "none"
        )  # fmt: skip
        return IndexCheck(str(self.path), total, len(damaged), problem, catalog, damaged, repair)

    def _half_rows(self, generation: int, rows: int) -> tuple[np.ndarray | None, str]:
        """The float16 copy's rows, or what is wrong with it."""
        half = vector_file(self.path, generation, self.dim, half=True)
        try:
            half.check(rows)
        except IndexDamaged as damage:
            return None, damage.message.replace(f"its vector file {half.path.name} ", "")
        return half.matrix(rows), ""


def _half_scores(half: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The float16 first pass (torch's CPU kernel accumulates in float32), as float32."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (a read-only memory map: torch only reads it)
        matrix = torch.from_numpy(half)
    return torch.mv(matrix, torch.from_numpy(query.astype(np.float16))).float().numpy()


def _sound(row: np.ndarray, crc: int) -> bool:
    """A stored embedding as written: its checksum, finite, of unit length (L2-normalised; bf16 runs within 5 %)."""
    with np.errstate(all="ignore"):
        return checksum(row) == crc and bool(np.isfinite(row).all()) and abs(float(np.linalg.norm(row)) - 1) < 0.05
