"""Checksums by block of an index's vector files, so that every row a ranking reads is checked before it takes part
(the CRC-32 of each row checks only what a query returns: damage that lowers a score is never returned).

A block is ``BLOCK_ROWS`` rows; its checksum is the sum, modulo 2**64, of its bytes read as 64-bit integers: exact
and order-free (the same on every machine), any flipped bit changes it, and numpy computes it faster than the matrix
product reads the same bytes. The catalog holds them (``blocks``: generation, copy, block, rows covered, sum),
written in the transaction that writes the rows. A long-lived process remembers what it verified, per file,
generation, size and modification time: a server pays once per change."""

from __future__ import annotations

import os
import sqlite3

import numpy as np

BLOCK_ROWS = 1024
TABLE = (
    "CREATE TABLE IF NOT EXISTS blocks (generation INTEGER NOT NULL, half INTEGER NOT NULL, block INTEGER NOT NULL, "
    "rows INTEGER NOT NULL, sum INTEGER NOT NULL, PRIMARY KEY (generation, half, block))"
)
_verified: dict[tuple, None] = {}  # what this process checked (oldest first; bounded)


def _sums(matrix: np.ndarray, first_block: int, end_row: int) -> list[tuple[int, int, int]]:
    """(block, rows covered, sum) of the blocks from ``first_block`` to the one holding row ``end_row - 1``."""
    found = []
    for block in range(first_block, -(-end_row // BLOCK_ROWS)):
        start, end = block * BLOCK_ROWS, min(end_row, (block + 1) * BLOCK_ROWS)
        raw = np.ascontiguousarray(matrix[start:end]).reshape(-1).view(np.uint8)  # (a memory map's rows: no copy)
        if raw.size % 8:  # (rows that do not fill 64-bit words: padded with zeros)
            raw = np.concatenate([raw, np.zeros(8 - raw.size % 8, dtype=np.uint8)])
        total = int(raw.view(np.int64).sum(dtype=np.int64))  # (wraps: a sum modulo 2**64)
        found.append((block, end - start, total))
    return found


def record(db: sqlite3.Connection, generation: int, half: bool, matrix: np.ndarray, start: int, end: int) -> None:
    """(Inside the write transaction that wrote rows [start, end) of ``matrix``, the file's first ``end`` rows.)
    The checksums of the blocks those rows fall in."""
    if end <= start:
        return
    db.execute(TABLE)
    rows = [(generation, int(half), *block) for block in _sums(matrix, start // BLOCK_ROWS, end)]
    db.executemany("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?)", rows)


def record_slots(db: sqlite3.Connection, generation: int, half: bool, matrix: np.ndarray, slots: list[int]) -> None:
    """(A repair.) The checksums of the blocks holding ``slots`` again, from what the file holds now."""
    for block in sorted({slot // BLOCK_ROWS for slot in slots}):
        end = min(len(matrix), (block + 1) * BLOCK_ROWS)
        record(db, generation, half, matrix, block * BLOCK_ROWS, end)


def forget_before(db: sqlite3.Connection, generation: int) -> None:
    """(With a switch to ``generation``.) The older generations' checksums."""
    db.execute(TABLE)
    db.execute("DELETE FROM blocks WHERE generation < ?", (generation,))


def covered(db: sqlite3.Connection, generation: int, half: bool, rows: int) -> dict[int, tuple[int, int]] | None:
    """The recorded checksums (block -> (rows, sum)) if they cover the first ``rows`` rows, else None (an index
    written before checksums by block: its next writer records them)."""
    try:
        found = {
            block: (count, total)
            for block, count, total in db.execute(
                "SELECT block, rows, sum FROM blocks WHERE generation = ? AND half = ?", (generation, int(half))
            )
        }
    except sqlite3.OperationalError:  # (no such table yet)
        return None
    blocks = -(-rows // BLOCK_ROWS)
    if any(block not in found for block in range(blocks)):
        return None
    if blocks and found[blocks - 1][0] != rows - (blocks - 1) * BLOCK_ROWS:
        return None
    return found


def damaged_blocks(
    path, recorded: dict[int, tuple[int, int]], matrix: np.ndarray, key: tuple, first: int = 0
) -> list[int]:
    """The blocks of ``matrix`` (a file's first rows) from block ``first`` on whose bytes no longer sum to what was
    recorded; none if this process already verified the file as it is (``key``: which file, generation and copy)."""
    try:
        found = os.stat(path)
    except OSError:
        return []  # (said by whatever reads it next)
    remembered = (*key, first, len(matrix), found.st_size, found.st_mtime_ns)
    if remembered in _verified or (*key, 0, *remembered[-3:]) in _verified:  # (this range, or the whole file)
        return []
    damaged = [block for block, _, total in _sums(matrix, first, len(matrix)) if recorded[block][1] != total]
    if not damaged:
        _verified[remembered] = None
        while len(_verified) > 256:
            del _verified[next(iter(_verified))]
    return damaged
