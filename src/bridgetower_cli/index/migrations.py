"""Index upgrades, step by step (as rclip's ``DB.ensure_version``): each step one write transaction, so a kill leaves
the index at the step before and the next open resumes. Results are unchanged: the embeddings move, never change.
Each step decides inside its transaction, from the schema and generation it reads there: another process may have
done it while this one waited for the lock (then it does nothing). The files a step writes are the next
generation's, which only its commit publishes.

    1 -> 2   embeddings as SQLite blobs (bt 0.1) -> a vector file beside the catalog (content hashes unknown: '')
    2 -> 3   the vector file gets a header and the catalog a CRC-32 per row, a claims table and bt's application id
    3 -> 4   a column for when each photo was taken (EXIF), unknown for the rows already there
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import BtError
from .catalog import APPLICATION_ID, SCHEMA, SCHEMA_VERSION, Catalog
from .vectors import VectorFile, checksums, vector_files


def schema_of(catalog: Catalog) -> int:
    """The schema version an index was written with (0: a new, empty file)."""
    if "meta" not in catalog.tables():
        return 0
    try:
        return int(catalog.meta().get("schema", "0"))
    except ValueError:
        return 0


def known_schema(catalog: Catalog) -> int:
    """The index's schema version; one this bt does not know (a newer bt's) is refused, untouched."""
    version = schema_of(catalog)
    if version > SCHEMA_VERSION:
        raise BtError(f"the index {catalog.path} was written by a newer bt (schema {version})", "upgrade bt")
    return version


def upgrade(catalog: Catalog) -> int:
    """Bring a writable catalog to the current schema; how many steps ran."""
    steps = 0
    while 0 < (version := known_schema(catalog)) < SCHEMA_VERSION:
        STEPS[version](catalog)
        steps += 1
    return steps


def _raw_rows(path: Path, dim: int) -> np.ndarray:
    """A headerless (schema 2) vector file, memory-mapped."""
    rows = path.stat().st_size // (4 * dim) if path.exists() else 0
    if rows == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(rows, dim))


def _v1_to_v2(catalog: Catalog) -> None:
    """Embeddings out of SQLite blobs into a headerless vector file (schema 2's format), one transaction."""
    target = Path(f"{catalog.path}.vectors-0")
    with catalog.transaction() as db:
        if schema_of(catalog) != 1:
            return  # (upgraded by another process meanwhile)
        dim = int(catalog.meta()["dim"])
        rows = db.execute("SELECT path, size, mtime_ns, embedding FROM images ORDER BY path").fetchall()
        made = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)  # (never another's)
        with os.fdopen(made, "wb") as file:
            for _, _, _, blob in rows:
                if len(blob) != 4 * dim:
                    raise BtError(f"the index {catalog.path} holds an embedding of the wrong size", "rebuild it")
                file.write(blob)
            file.flush()
            os.fsync(file.fileno())
        db.execute("DROP TABLE images")
        db.execute(
            "CREATE TABLE images (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, "
            "hash TEXT NOT NULL, slot INTEGER NOT NULL)"
        )
        db.executemany(
            "INSERT INTO images VALUES (?, ?, ?, '', ?)", [(p, s, m, k) for k, (p, s, m, _) in enumerate(rows)]
        )
        catalog.set_meta(schema=2, generation=0)


def _v2_to_v3(catalog: Catalog) -> None:
    """The next generation written with a header and only the rows referenced (a compaction), a CRC-32 per row,
    claims, the application id. Rows whose slot lies past the end of a damaged file are dropped (never guessed):
    the next refresh embeds those files again."""
    with catalog.transaction() as db:
        if schema_of(catalog) != 2:
            return  # (upgraded by another process meanwhile: nothing of its files is touched)
        meta = catalog.meta()
        dim, generation = int(meta["dim"]), int(meta.get("generation", "0"))
        new = [VectorFile(catalog.path, generation + 1, dim, half) for half in (False, True)]
        old = _raw_rows(Path(f"{catalog.path}.vectors-{generation}"), dim)
        db.execute("DELETE FROM images WHERE slot >= ? OR slot < 0", (len(old),))
        slots = [slot for (slot,) in db.execute("SELECT DISTINCT slot FROM images ORDER BY slot")]
        rows = np.asarray(old[slots], dtype=np.float32) if slots else np.zeros((0, dim), dtype=np.float32)
        for file in new:
            file.write_all(rows)
        db.execute("ALTER TABLE images ADD COLUMN checksum INTEGER NOT NULL DEFAULT 0")
        renumber = [(-1 - k, crc, slot) for k, (slot, crc) in enumerate(zip(slots, checksums(rows)))]
        db.executemany("UPDATE images SET slot = ?, checksum = ? WHERE slot = ?", renumber)
        db.execute("UPDATE images SET slot = -1 - slot")
        for statement in SCHEMA.strip().split(";"):  # the tables and indexes schema 3 adds
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        catalog.set_meta(schema=3, generation=generation + 1, rows=len(slots))
    for stale, path in vector_files(catalog.path).items():
        if stale <= generation:
            path.unlink(missing_ok=True)


def _v3_to_v4(catalog: Catalog) -> None:
    """The ``taken`` column (rows indexed before: unknown, and browsed by their modification time)."""
    with catalog.transaction() as db:
        if schema_of(catalog) != 3:
            return
        db.execute("ALTER TABLE images ADD COLUMN taken INTEGER")
        catalog.set_meta(schema=4)


STEPS = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}
