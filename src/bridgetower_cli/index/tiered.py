"""An open index's approximate tier (``tier.py``): when one is wanted, building and publishing it (kill-safe: the
file is written first, one commit publishes it, a build that lost a race with a compaction removes its own file),
the older tiers and the float16 copy it replaces removed, and the search over it."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import numpy as np

from ..errors import IndexDamaged, NoSpace
from . import tier as tiers
from .blocks import BLOCK_ROWS
from .search import REPAIR, Reading, vector_file
from .vectors import VectorFile, checksum, no_space


class Tiered(Reading):
    """What an index does with its tier (``EmbeddingIndex`` is one)."""

    def tier(self) -> tiers.Tier | None:
        return tiers.Tier.of(self.catalog.meta())

    def tier_from(self) -> int:
        """The rows from which the index has a tier (0: never)."""
        return int(self.catalog.meta().get("tier_from", tiers.TIER_FROM))

    def set_tier_from(self, rows: int) -> None:
        with self.catalog.transaction():
            self.catalog.set_meta(tier_from=rows)

    def tier_wanted(self) -> bool:
        """A tier should be built: the index is large enough and it has none for its generation, or rows added since
        are over a tenth of it, or its file is damaged."""
        with self.catalog.transaction():
            generation, rows = self._state()
            made, threshold = self.tier(), self.tier_from()
        if threshold <= 0 or rows < max(threshold, tiers.MIN_ROWS) or not tiers.available():
            return False
        if made is None or made.generation != generation or rows - made.rows > max(made.rows // 10, BLOCK_ROWS):
            return True
        try:
            tiers.load(self.path.parent, made)
        except IndexDamaged:
            return True
        return False

    def build_tier(self, pause: Callable[[str], None] = lambda step: None) -> tiers.Tier | None:
        """Build the tier of the current generation's rows and publish it; None if a compaction switched
        generations meanwhile (its file is then removed). ``pause`` is called between steps (for tests)."""
        started = time.monotonic()
        with self.catalog.transaction():
            generation, rows = self._state()
            vectors = vector_file(self.path, generation, self.dim)
            vectors.check(rows)
        matrix = vectors.matrix(rows)
        if self._damaged_blocks(vectors, matrix):
            raise IndexDamaged(f"the index {self.path} is damaged: some blocks of its vectors do not match", REPAIR)
        built, spec = tiers.build(matrix)
        measured = tiers.measured_recall(built, matrix)
        try:
            name, size, crc = tiers.write(self.path.parent, self.path.name, built, generation, rows)
        except OSError as error:
            if no_space(error):
                raise NoSpace(f"no space left on {self.path.parent} for the index's search tier") from None
            raise
        made = tiers.built_now(name, size, crc, spec, generation, rows, started, measured)
        published = False
        try:
            pause("written")
            with self.catalog.transaction():
                if self._state()[0] == generation:
                    self.catalog.set_meta(tier=made.dumps())
                    published = True
        finally:
            if not published:
                (self.path.parent / name).unlink(missing_ok=True)
        self._drop_unused_tiers(name)
        half = VectorFile(self.path, generation, self.dim, half=True)
        if made.usable and half.is_bts():  # (the tier is the first pass now: the copy's half of the disk is returned)
            half.path.unlink(missing_ok=True)
        return made if published else None

    def _drop_unused_tiers(self, current: str) -> None:
        for path in tiers.files_of(self.path):
            if path.name != current:
                path.unlink(missing_ok=True)  # (another process may have removed it)

    def tier_stats(self) -> dict:
        """What ``--stats`` says of the tier (``IndexStats``' tier fields)."""
        made, size = self.tier(), 0
        with contextlib.suppress(OSError):
            size = os.stat(self.path.parent / made.file).st_size if made else 0
        shown = ({"tier": made.spec, "tier_rows": made.rows, "tier_bytes": size, "tier_build_s": made.build_s,
                 "tier_recall": made.recall, "tier_candidates": made.candidates, "tier_used": made.usable}
                 if made else {})  # fmt: skip
        return shown | {"tier_from": self.tier_from()}

    def _tier_of(self, generation: int) -> tiers.Tier | None:
        """The tier of ``generation``, if one is published and usable (it then replaces the float16 copy; one whose
        recall fell short at its build is kept only so that it is not built again until the rows grow)."""
        made = self.tier()
        return made if made is not None and made.generation == generation and made.usable else None

    def _tier_problem(self, generation: int) -> str:
        """What is wrong with the published tier ("" if nothing, or none is published)."""
        made = self._tier_of(generation)
        try:
            if made is not None and tiers.available():
                tiers.load(self.path.parent, made)
        except IndexDamaged as damage:
            return damage.message
        return ""

    # -- search -----------------------------------------------------------------------------------------------

    def _usable_tier(self, generation: int, rows: int):
        """(the tier's record, its faiss index) when a search may use it: large enough, of this generation,
        readable and sound; else None (the search is exact)."""
        made, threshold = self._tier_of(generation), self.tier_from()
        if made is None or threshold <= 0 or rows < threshold or not tiers.available():
            return None
        try:
            return made, tiers.load(self.path.parent, made)
        except IndexDamaged:  # (passed over: ``--check`` names it, ``--repair`` or the next refresh builds it)
            return None

    def _approximate(self, usable, vectors, matrix, query, want: int, wanted) -> list | None:
        """The ``want`` best wanted rows, from the tier's candidates and the rows added since its build, every one
        scored exactly in float32 and its CRC-32 checked; None if fewer were found (the search is then exact)."""
        made, faiss_index = usable
        count = made.candidates * max(1, -(-want // 10))  # (its count per 10 hits wanted)
        proposed = [tiers.candidates(faiss_index, query, count)]
        if len(matrix) > made.rows:  # the rows added since: searched exactly, their blocks checked first
            if self._damaged_tail(vectors, matrix, made.rows):
                raise IndexDamaged(f"the index {self.path} is damaged: some blocks of its vectors do not match", REPAIR)
            with np.errstate(all="ignore"):
                tail = matrix[made.rows :] @ query
            best = (
                np.argpartition(-tail, min(count, len(tail)) - 1)[:count] if len(tail) > count else np.arange(len(tail))
            )
            proposed.append(made.rows + best)
        slots = np.unique(np.concatenate(proposed))
        gathered = vectors.read_rows(slots)  # (read, not mapped: a query process stays small at any size)
        at = dict(zip(slots.tolist(), range(len(slots))))
        with np.errstate(all="ignore"):
            exact = dict(zip(slots.tolist(), (gathered @ query).tolist()))
        rows = [(path, slot, crc) for path, slot, crc in self.catalog.paths_at(slots.tolist()) if wanted(path)]
        if any(checksum(gathered[at[slot]]) != crc for _, slot, crc in rows):
            raise IndexDamaged(
                f"the index {self.path} is damaged: some of the vectors found do not match their checksums", REPAIR
            )
        if any(not abs(exact[slot]) <= 1.01 for _, slot, _ in rows):  # (as written, yet not an embedding)
            raise IndexDamaged(f"the index {self.path} is damaged: some vectors are not embeddings", REPAIR)
        rows.sort(key=lambda row: (-exact[row[1]], row[1], row[0]))
        found = [(path, slot, crc, exact[slot]) for path, slot, crc in rows[:want]]
        return found if len(found) == want else None

    def _damaged_tail(self, vectors, matrix, start: int) -> bool:
        """The blocks from ``start``'s on do not match their checksums (recorded ones only)."""
        return bool(self._damaged_blocks(vectors, matrix, first=start // BLOCK_ROWS))
