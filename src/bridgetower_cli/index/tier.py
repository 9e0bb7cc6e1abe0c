"""The approximate tier of a large index: a faiss PQ fast-scan index of one generation's vectors (every row's 4-bit
codes, half a byte per sub-vector, scanned whole per query with SIMD: no partition can hide a neighbour from it),
built beside the vector file like a compaction, published by one commit (the catalog's ``tier`` meta names its file
and checksum) and used by searches from ``TIER_FROM`` rows on. It only proposes candidates: each is scored again in
float32 from the vector file (its CRC-32 checked), rows added since the build are searched exactly beside it, and
``exact`` searches everything. A damaged tier is detected by its checksum and passed over (the search is exact) until
a repair or the next refresh builds it again.

File: the faiss index as faiss writes it, then a trailer (bt's magic, the generation and rows it covers, the
payload's length and CRC-32): a leftover of a killed build is recognised as bt's by it."""

from __future__ import annotations

import json
import os
import secrets
import struct
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import IndexDamaged

TIER_FROM = 200_000  # rows from which a tier is built and used (there: 5 ms a query against 19 ms exact, bench_tier.py)
MIN_ROWS = 1000  # whatever --tier-from says: fewer rows cannot train one (and exact search is instant there)
MAGIC = b"BTTIER\x00\x01"
TRAILER = struct.Struct("<8sQQQI")  # magic, generation, rows, payload bytes, payload CRC-32
CANDIDATES = (64, 128, 256, 512, 1024)  # a tier rescores the fewest of these that reach ``RECALL`` at its build
RECALL = 0.99  # recall@10 against exact search a tier's candidate count must reach (else it takes the most)
USABLE_RECALL = 0.98  # below this at its build a tier is not used: searches stay exact (near-identical rows)
RECALL_QUERIES = 100
TRAIN_ROWS = 65_536  # rows the codebooks are trained on (16 centroids per sub-vector: a sample is plenty)
_LOADED: dict[tuple, object] = {}  # tiers read by this process: (path, inode, size, mtime) -> faiss index


@dataclass
class Tier:
    """A published tier, as the catalog's ``tier`` meta records it."""

    file: str  # its name, beside the catalog
    generation: int
    rows: int  # it covers the vector file's first ``rows`` rows
    bytes: int
    crc: int
    spec: str  # the faiss index factory string
    build_s: float
    recall: float  # recall@10 of held-out queries against exact search with ``candidates``, measured at its build
    built_at: float
    candidates: int = CANDIDATES[-1]  # rescored per query (per 10 hits wanted)

    @property
    def usable(self) -> bool:
        """Good enough to search with (and to replace the float16 copy), as measured at its build."""
        return self.recall >= USABLE_RECALL

    @classmethod
    def of(cls, meta: dict[str, str]) -> Tier | None:
        if not meta.get("tier"):
            return None
        recorded = json.loads(meta["tier"])  # (what a newer bt adds is left; what an older one lacks, defaulted)
        return cls(**{name: recorded[name] for name in cls.__dataclass_fields__ if name in recorded})

    def dumps(self) -> str:
        return json.dumps(asdict(self))


def available() -> bool:
    """faiss is installed (the ``[tier]`` extra): without it, every search is exact."""
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def spec_for(dim: int) -> str:
    """4-bit fast-scan PQ codes of 64 sub-vectors (32 bytes a row; fewer for a narrower model), no coarse partition:
    at 10M clustered rows an IVF (4096 lists, 64 probed) missed 6 % of the top 10, a full scan of the codes none, in
    ~17 ms (``benchmarks/results/tier.txt``, ``tier-ivf-10m.txt``)."""
    codes = next(m for m in (64, 32, 16, 8, 4, 2, 1) if dim % m == 0)
    return f"PQ{codes}x4fs"


def build(matrix: np.ndarray, seed: int = 0):
    """A trained and filled faiss index of ``matrix``'s rows (inner product), and its factory string."""
    import faiss

    rows, dim = matrix.shape
    spec = spec_for(dim)
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    sample = np.sort(np.random.default_rng(seed).choice(rows, size=min(rows, TRAIN_ROWS), replace=False))
    index.train(np.ascontiguousarray(matrix[sample], dtype=np.float32))
    for start in range(0, rows, 100_000):
        index.add(np.ascontiguousarray(matrix[start : start + 100_000], dtype=np.float32))
    return index, spec


def candidates(index, query: np.ndarray, count: int) -> np.ndarray:
    """The slots the tier proposes for ``query`` (best first by its approximate score)."""
    _, found = index.search(np.asarray(query, dtype=np.float32)[None, :], count)
    return found[0][found[0] >= 0]


def measured_recall(index, matrix: np.ndarray, seed: int = 1) -> tuple[int, float]:
    """The fewest ``CANDIDATES`` whose recall@10 reaches ``RECALL`` (else the most), and that recall: held-out
    queries (rows of the index moved a little off themselves) against exact search, each query's candidates rescored
    exactly as a search rescores them."""
    rng = np.random.default_rng(seed)
    rows, dim = matrix.shape
    picked = np.sort(rng.choice(rows, size=min(rows, RECALL_QUERIES), replace=False))
    queries = matrix[picked] + 0.5 / np.sqrt(dim) * rng.standard_normal((len(picked), dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    for start in range(0, rows, 200_000):  # the exact top-10 scores, a slice of the file at a time
        scores = queries @ np.asarray(matrix[start : start + 200_000], dtype=np.float32).T
        exact = -np.sort(-np.concatenate([exact, scores], axis=1), axis=1)[:, :10]
    found = dict.fromkeys(CANDIDATES, 0)
    for query, best in zip(queries, exact):
        proposed = candidates(index, query, CANDIDATES[-1])  # (best first: each count's candidates are a prefix)
        rescored = np.asarray(matrix[proposed], dtype=np.float32) @ query  # (read once, as a search rescores them)
        for count in CANDIDATES:
            scores = np.sort(rescored[:count])[::-1][:10]
            found[count] += int(np.sum(scores >= best[-1] - 1e-6)) if len(scores) else 0
    recall = {count: hits / (10 * len(queries)) for count, hits in found.items()}
    chosen = next((count for count in CANDIDATES if recall[count] >= RECALL), CANDIDATES[-1])
    return chosen, recall[chosen]


def write(folder: Path, catalog_name: str, index, generation: int, rows: int) -> tuple[str, int, int]:
    """The tier written to a new file (never another's: ``O_EXCL``, an unguessable name), synced: (name, bytes,
    payload CRC-32)."""
    import faiss

    payload = faiss.serialize_index(index).tobytes()
    crc = zlib.crc32(payload)
    name = f"{catalog_name}.tier-{generation}-{secrets.token_hex(4)}"
    made = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(made, "wb") as file:
        file.write(payload)
        file.write(TRAILER.pack(MAGIC, generation, rows, len(payload), crc))
        file.flush()
        os.fsync(file.fileno())
    return name, len(payload) + TRAILER.size, crc


def files_of(catalog: Path) -> list[Path]:
    """The tier files beside ``catalog`` that are bt's (named after it, with bt's trailer)."""
    prefix = f"{catalog.name}.tier-"
    with os.scandir(catalog.parent) as entries:
        named = [Path(entry.path) for entry in entries if entry.name.startswith(prefix)]
    return [path for path in named if is_bts(path)]


def is_bts(path: Path) -> bool:
    """The file ends with a tier trailer (bt wrote it): one bt may remove."""
    try:
        with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as file:
            file.seek(-TRAILER.size, os.SEEK_END)
            return TRAILER.unpack(file.read(TRAILER.size))[0] == MAGIC
    except (OSError, struct.error):
        return False


def load(folder: Path, tier: Tier):
    """The faiss index of a published tier, its trailer and checksum verified (once per process and file state);
    ``IndexDamaged`` if they do not match what the catalog recorded."""
    import faiss

    path = folder / tier.file
    try:
        found = os.stat(path, follow_symlinks=False)
    except OSError as error:
        raise IndexDamaged(f"its tier {tier.file} cannot be read ({error.strerror or error})") from None
    key = (str(path), found.st_ino, found.st_size, found.st_mtime_ns)
    if key not in _LOADED:
        data = _read(path)
        magic, generation, rows, length, crc = TRAILER.unpack(data[-TRAILER.size :] or bytes(TRAILER.size))
        payload = memoryview(data)[:length]
        if (magic, generation, rows, length, crc) != (MAGIC, tier.generation, tier.rows, len(data) - TRAILER.size,
                                                      tier.crc) or zlib.crc32(payload) != crc:  # fmt: skip
            raise IndexDamaged(f"its tier {tier.file} does not match its checksum")
        for stale in [k for k in _LOADED if k[0] == key[0] or not os.path.exists(k[0])]:
            del _LOADED[stale]
        _LOADED[key] = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
    return _LOADED[key]


def _read(path: Path) -> bytes:
    with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW)) as file:
        data = file.read()
    if len(data) < TRAILER.size:
        raise IndexDamaged(f"its tier {path.name} is cut short")
    return data


def built_now(name: str, size: int, crc: int, spec: str, generation: int, rows: int, started: float,
              measured: tuple[int, float]) -> Tier:  # fmt: skip
    """The record of a tier just written (``measured``: its candidate count and their recall)."""
    count, recall = measured
    return Tier(name, generation, rows, size, crc, spec, round(time.monotonic() - started, 1), round(recall, 4),
                time.time(), count)  # fmt: skip
