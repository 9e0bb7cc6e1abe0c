"""The index at the size of a photo library: 10k / 100k / 1M rows of 512-d unit vectors for files that exist,
written through the index's own API; the current design against the 0.1 design (embeddings as SQLite blobs, all
read back per query) in the same run.

    python benchmarks/bench_index_scale.py [--sizes 10000,100000,1000000] [--server-checkpoint base]

Per size: the search step of one query (exact: the memory-mapped matrix times the query, top 10) against reading
every blob back out of SQLite; the refresh of the unchanged tree (walk, stat, plan); the index size on disk against
the raw vector bytes; the peak RSS of a query (a fresh process). At the largest size, a whole `bt retrieve
--no-refresh` through `bt serve` (the base checkpoint's 512-d text embedding as the query).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import CACHE, machine, table

from bridgetower_cli.index import search as index_search
from bridgetower_cli.index.files import FileState
from bridgetower_cli.index.store import EmbeddingIndex
from bridgetower_cli.records import Outcome
from bridgetower_cli.sources import expand_image_sources
from bridgetower_cli.tasks import indexing

DIM = 512
PER_FOLDER = 1000


def tree(count: int) -> Path:
    """``count`` empty .jpg files, 1000 per folder, made once."""
    root = CACHE / f"tree-{count}"
    marker = root / ".complete"
    if marker.exists():
        return root
    for folder in range(-(-count // PER_FOLDER)):
        (root / f"d{folder:04d}").mkdir(parents=True, exist_ok=True)
        for k in range(min(PER_FOLDER, count - folder * PER_FOLDER)):
            (root / f"d{folder:04d}" / f"img{k:04d}.jpg").touch()
    marker.touch()
    return root


def unit_rows(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, DIM), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def build(count: int) -> tuple[Path, Path]:
    """The index (current design) and the 0.1-style blob table, for the tree of ``count`` files."""
    root = tree(count)
    path = CACHE / f"index-{count}.sqlite"
    blobs = CACHE / f"blobs-{count}.sqlite"
    if path.exists() and blobs.exists():
        return root, path
    for stale in CACHE.glob(f"index-{count}.sqlite*"):
        stale.unlink()
    blobs.unlink(missing_ok=True)
    index = EmbeddingIndex.for_writing(path, "synthetic", DIM, label="synthetic")
    legacy = sqlite3.connect(blobs)
    legacy.execute("CREATE TABLE images (path TEXT PRIMARY KEY, embedding BLOB NOT NULL)")
    sources = expand_image_sources([str(root)])
    for start in range(0, len(sources), 10000):
        chunk = sources[start : start + 10000]
        vectors = unit_rows(len(chunk), start)
        states = [FileState(s.path, *_stamp(s.path)) for s in chunk]
        index.store([(st, f"h{start + k}", v) for k, (st, v) in enumerate(zip(states, vectors))], [])
        legacy.executemany(
            "INSERT INTO images VALUES (?, ?)", [(st.path, v.tobytes()) for st, v in zip(states, vectors)]
        )
        legacy.commit()
    index.close()
    legacy.close()
    return root, path


def _stamp(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def search_step(index: EmbeddingIndex, root: Path, query: np.ndarray, old: bool = False) -> list[str]:
    """One query's search and its time; ``old``: as bt 0.2 searched, mapping the vector file anew for each query
    and one float32 pass over every row."""
    half_from = index_search.HALF_FROM
    if old:
        index_search._MAPS.clear()
        index_search.HALF_FROM = 10**12
    try:
        start = time.perf_counter()
        paths, _ = index.search(query, 10, folders=[root])
        elapsed = time.perf_counter() - start
    finally:
        index_search.HALF_FROM = half_from
    assert len(paths) == 10
    return elapsed, paths


def blob_step(blobs: Path, query: np.ndarray) -> float:
    start = time.perf_counter()
    with sqlite3.connect(blobs) as db:
        rows = db.execute("SELECT path, embedding FROM images").fetchall()
    matrix = np.frombuffer(b"".join(blob for _, blob in rows), dtype=np.float32).reshape(len(rows), DIM)
    similarities = matrix @ query
    _ = np.argpartition(-similarities, 9)[:10]
    return time.perf_counter() - start


def refresh_step(index: EmbeddingIndex, root: Path) -> float:
    start = time.perf_counter()
    sources = expand_image_sources([str(root)])
    stats = indexing.refresh_index(None, index, sources, Outcome(), [root])
    assert stats.unchanged == len(sources) and stats.new == 0
    return time.perf_counter() - start


PEAK = """
import re, sys, numpy as np
from pathlib import Path
from bridgetower_cli.index.store import EmbeddingIndex
index = EmbeddingIndex.for_reading(Path(sys.argv[1]))
query = np.random.default_rng(1).standard_normal(512).astype(np.float32)
index.search(query / np.linalg.norm(query), 10, folders=[Path(sys.argv[2])])
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024)
"""


def served_query(root: Path, path: Path, checkpoint_size: str) -> float:
    """A whole `bt retrieve --no-refresh` through `bt serve` (the model and the index with the server)."""
    from common import checkpoint

    model = checkpoint(checkpoint_size, ("itm", "mlm", "itc"))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridgetower_cli",
            "serve",
            "--port",
            "0",
            "-m",
            str(model),
            "--allow-path",
            str(CACHE),
            "--index-dir",
            str(CACHE / "served-indexes"),
            "-d",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = server.stdout.readline().strip()
    # The synthetic index is tied to no checkpoint: serve a copy whose fingerprint is the model's.
    from bridgetower_cli.model.hub import fingerprint

    served = CACHE / "served-indexes" / "served.sqlite"
    served.parent.mkdir(exist_ok=True)
    for stale in served.parent.glob("served.sqlite*"):
        stale.unlink()
    subprocess.run(["cp", str(path), str(served)], check=True)
    generation = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]
    subprocess.run(
        ["cp", "--reflink=auto", f"{path}.vectors-{generation}", f"{served}.vectors-{generation}"], check=True
    )
    with sqlite3.connect(served) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'model'", (fingerprint(model),))
    command = [
        sys.executable,
        "-m",
        "bridgetower_cli",
        "retrieve",
        "a cat on a couch",
        str(root),
        "-n",
        "--no-rerank",
        "--index",
        "served",
        "-m",
        str(model),
        "-f",
        "json",
    ]
    env = dict(os.environ, BT_SERVER=url)
    try:
        subprocess.run(command, env=env, check=True, capture_output=True)  # warm: model and page cache
        times = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(command, env=env, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        return min(times)
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--server-checkpoint", default="base")
    parser.add_argument("--json")
    args = parser.parse_args()
    print(machine())
    gc.freeze()  # as bt does once its model is loaded
    rows, results = [], {}
    query = unit_rows(1, 999)[0]
    sizes = [int(s) for s in args.sizes.split(",")]
    for count in sizes:
        root, path = build(count)
        index = EmbeddingIndex.for_writing(path, "synthetic", DIM)
        search_step(index, root, query)  # warm the page cache (and the float16 copy), as a second query finds it
        search_step(index, root, query, old=True)
        olds = [search_step(index, root, query, old=True) for _ in range(5)]
        news = [search_step(index, root, query) for _ in range(5)]
        assert all(paths == olds[0][1] for _, paths in olds + news)  # the same hits, exactly
        remapped = sorted(elapsed for elapsed, _ in olds)[2]
        search = sorted(elapsed for elapsed, _ in news)[2]
        blob = min(blob_step(CACHE / f"blobs-{count}.sqlite", query) for _ in range(2))
        refresh = min(refresh_step(index, root) for _ in range(2)) if count <= 100000 else None
        disk = sum(f.stat().st_size for f in CACHE.glob(f"index-{count}.sqlite*"))
        raw = count * DIM * 4
        peak = float(
            subprocess.run(
                [sys.executable, "-c", PEAK, str(path), str(root)], capture_output=True, text=True, check=True
            ).stdout
        )
        index.close()
        results[count] = {
            "search_s": search,
            "search_remapped_s": remapped,
            "blob_s": blob,
            "refresh_s": refresh,
            "disk_bytes": disk,
            "raw_bytes": raw,
            "query_peak_rss_mib": peak,
        }
        rows.append(
            [
                f"{count:,}",
                f"{search * 1000:.0f} ms",
                f"{remapped * 1000:.0f} ms",
                f"{search / remapped:.2f}",
                f"{blob * 1000:.0f} ms",
                "-" if refresh is None else f"{refresh:.2f} s",
                f"{disk / raw:.2f}x",
                f"{peak:.0f} MiB",
            ]
        )
    print(
        table(
            [
                "rows (512-d)",
                "search step, exact (median of 5)",
                "0.2: mapped per query, float32 pass",
                "ratio",
                "0.1: read every blob",
                "refresh, unchanged tree",
                "disk / raw vectors",
                "query peak RSS",
            ],
            rows,
        )
    )
    largest = max(sizes)
    served = served_query(*build(largest), args.server_checkpoint)
    results["served_retrieve_s"] = served
    print(f"whole `bt retrieve --no-refresh` through `bt serve` at {largest:,} rows: {served:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
