"""The vector file of an index: ``<index>.vectors-<generation>``, a 64-byte header (magic, dimension, dtype,
generation, rows written) then float32 rows, appended and never rewritten in place. Queries multiply it through a
memory map kept for the life of the process; a compaction writes the next generation whole. Each row has a CRC-32
(kept in SQLite beside the row's path) so a damaged row is found, never returned as a result."""

from __future__ import annotations

import errno
import os
import re
import stat
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import BtError, IndexDamaged, NoSpace

MAGIC = b"BTVECS\x00\x01"
HEADER = struct.Struct("<8sIIQQ")  # magic, dim, dtype (0: float32, 1: float16), generation, rows written
HEADER_BYTES = 64
DTYPES = {0: np.float32, 1: np.float16}
FOREIGN_VECTORS = "move it away, or pass --index with another file name"


def checksum(row: np.ndarray) -> int:
    """The CRC-32 of one row's float32 bytes."""
    return zlib.crc32(np.ascontiguousarray(row, dtype=np.float32).tobytes())


def checksums(rows: np.ndarray) -> list[int]:
    return [checksum(row) for row in rows]


def vector_files(index: Path) -> dict[int, Path]:
    """This index's vector files by generation: exactly ``<name>.vectors-<N>`` (the name is never a pattern)."""
    pattern = re.compile(re.escape(index.name) + r"\.vectors-(\d+)")
    try:
        names = os.listdir(index.parent)
    except OSError:
        return {}
    return {int(m.group(1)): index.parent / name for name in names if (m := pattern.fullmatch(name))}


def no_space(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class VectorFile:
    """One generation's vector file."""

    def __init__(self, index: Path, generation: int, dim: int, half: bool = False):
        """``half``: the float16 copy beside the file (``.f16``), a cache for the first pass of a search."""
        self.path = Path(f"{index}.vectors-{generation}" + (".f16" if half else ""))
        self.generation = generation
        self.dim = dim
        self.code = 1 if half else 0
        self.dtype = DTYPES[self.code]
        self.row_bytes = np.dtype(self.dtype).itemsize * dim
        self._map: np.memmap | None = None
        self._reader: int | None = None  # (a descriptor kept for ``read_rows``, closed with the object)

    def __del__(self):
        if getattr(self, "_reader", None) is not None:
            os.close(self._reader)

    # -- the header -------------------------------------------------------------------------------------------

    def is_bts(self) -> bool:
        """Whether the file is a regular file that carries bt's header (a file bt may delete)."""
        try:
            with os.fdopen(os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as file:
                return stat.S_ISREG(os.fstat(file.fileno()).st_mode) and file.read(len(MAGIC)) == MAGIC
        except OSError:
            return False

    def header(self) -> tuple[int, int, int]:
        """(dim, generation, rows written) from the header; a file that is not this index's is damage."""
        try:
            with open(self.path, "rb") as file:
                raw = file.read(HEADER_BYTES)
        except FileNotFoundError:
            raise IndexDamaged(f"its vector file {self.path.name} is missing") from None
        except OSError as error:
            raise self.unreadable(error) from None
        if len(raw) < HEADER.size or raw[:8] != MAGIC:
            raise IndexDamaged(f"its vector file {self.path.name} has no bt header")
        _, dim, dtype, generation, rows = HEADER.unpack(raw[: HEADER.size])
        if dim != self.dim or dtype != self.code or generation != self.generation:
            raise IndexDamaged(
                f"its vector file {self.path.name} belongs to another index (dim {dim}, generation {generation})"
            )
        return dim, generation, rows

    def _write_header(self, file, rows: int) -> None:
        file.seek(0)
        file.write(HEADER.pack(MAGIC, self.dim, self.code, self.generation, rows).ljust(HEADER_BYTES, b"\0"))

    def _open(self, mode: str):
        """The file opened without following a symlink (bt writes only files it made): ``r+b`` an existing file
        that carries bt's header; ``wb`` a new file, made exclusively, where a leftover is removed first only if
        its header says it is bt's (a partial generation a killed compaction left)."""
        if mode == "r+b":
            flags = os.O_RDWR | os.O_NOFOLLOW
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            self._remove_own_leftover()
        try:
            file = os.fdopen(os.open(self.path, flags, 0o644), mode)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise IndexDamaged(f"its vector file {self.path.name} is a symlink") from None
            if error.errno == errno.EEXIST:
                raise BtError(f"{self.path} is not bt's: bt never overwrites it", FOREIGN_VECTORS) from None
            raise
        if mode == "r+b" and file.read(len(MAGIC)) != MAGIC:
            file.close()
            raise IndexDamaged(f"its vector file {self.path.name} has no bt header")
        return file

    def _remove_own_leftover(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISREG(mode) and self.is_bts():
            self.path.unlink()

    def create(self) -> None:
        """A new, empty file of this generation (replacing a partial one a killed compaction left)."""
        with self._open("wb") as file:
            self._write_header(file, 0)
            file.flush()
            os.fsync(file.fileno())

    def rows_on_disk(self) -> int:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0
        return max(0, size - HEADER_BYTES) // self.row_bytes

    def check(self, committed: int) -> None:
        """O(1) integrity: this index's header, and at least the ``committed`` rows the catalog references."""
        self.header()
        on_disk = self.rows_on_disk()
        if on_disk < committed:
            raise IndexDamaged(f"its vector file holds {on_disk} rows where the catalog references {committed}")

    # -- writing ----------------------------------------------------------------------------------------------

    def append(self, vectors: np.ndarray, committed: int) -> int:
        """Append rows after the ``committed`` ones (cutting any a crash left beyond them), on disk before the
        caller's transaction commits: the first new slot. (Inside a write transaction: one writer at a time.)"""
        try:
            with self._open("r+b") as file:
                file.truncate(HEADER_BYTES + committed * self.row_bytes)
                file.seek(0, os.SEEK_END)
                with np.errstate(over="ignore"):  # (damaged rows rounded to float16: the copy is only a cache)
                    file.write(np.ascontiguousarray(vectors, dtype=self.dtype).tobytes())
                self._write_header(file, committed + len(vectors))
                file.flush()
                os.fsync(file.fileno())
        except OSError as error:
            if no_space(error):
                raise NoSpace(
                    f"no space left for the index's vectors on {self.path.parent}", "free some space"
                ) from None
            raise
        return committed

    def write_all(self, rows: np.ndarray) -> None:
        """The whole file at once (a compaction or a migration's next generation), fsynced; on failure nothing of it
        stays behind."""
        file = self._open("wb")  # (refused, and nothing removed, where a file that is not bt's stands)
        try:
            with file:
                self._write_header(file, len(rows))
                file.seek(HEADER_BYTES)
                for start in range(0, len(rows), 65536):
                    with np.errstate(over="ignore"):
                        file.write(np.ascontiguousarray(rows[start : start + 65536], dtype=self.dtype).tobytes())
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            self.path.unlink(missing_ok=True)  # (the file made just now)
            raise

    # -- reading ----------------------------------------------------------------------------------------------

    def matrix(self, rows: int) -> np.ndarray:
        """The first ``rows`` rows, memory-mapped read-only; the map is kept (and grown) for the life of this object,
        so repeated searches never map the file again."""
        if rows == 0:
            return np.zeros((0, self.dim), dtype=self.dtype)
        if self._map is None or self._map.shape[0] < rows:
            try:
                self._map = np.memmap(
                    self.path, dtype=self.dtype, mode="r", offset=HEADER_BYTES, shape=(rows, self.dim)
                )
            except FileNotFoundError:
                raise IndexDamaged(f"its vector file {self.path.name} is missing") from None
            except OSError as error:
                raise self.unreadable(error) from None
        return self._map[:rows]

    def unreadable(self, error: OSError) -> BtError:
        """A vector file that is there but cannot be read (its permissions, the disk): said as such, not damage."""
        reason = (error.strerror or str(error)).lower()
        return BtError(f"cannot read the index's vector file {self.path}: {reason}", "check its permissions")

    def read_rows(self, slots: np.ndarray) -> np.ndarray:
        """Rows by slot, read rather than mapped: a few scattered rows cost their own bytes, never a mapping's
        readahead (a fault in a large file can map megabytes around it into the process)."""
        if self._reader is None:
            try:
                self._reader = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                raise IndexDamaged(f"its vector file {self.path.name} is missing") from None
            except OSError as error:
                raise self.unreadable(error) from None
        offsets = [HEADER_BYTES + slot * self.row_bytes for slot in np.asarray(slots).tolist()]
        if len(offsets) > 1 and hasattr(os, "posix_fadvise"):  # every read asked for at once: the disk works on all
            for offset in offsets:
                os.posix_fadvise(self._reader, offset, self.row_bytes, os.POSIX_FADV_WILLNEED)
        found = np.empty((len(offsets), self.dim), dtype=self.dtype)
        for k, offset in enumerate(offsets):
            if os.preadv(self._reader, [found[k].view(np.uint8)], offset) != self.row_bytes:
                raise IndexDamaged(f"its vector file {self.path.name} is shorter than its rows")
        return found

    def rows(self, slots: list[int], committed: int) -> np.ndarray:
        return np.array(self.matrix(committed)[slots]) if slots else np.zeros((0, self.dim), dtype=self.dtype)
