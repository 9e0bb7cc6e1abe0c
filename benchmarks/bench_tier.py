"""The approximate tier at scale (issue 34): vectors written through the index API, the tier built as a refresh
builds it, queries through ``EmbeddingIndex.search`` with the tier and with ``exact``, side by side in one run:

    python benchmarks/bench_tier.py [--sizes 1000000,10000000] [--kind clustered|real] [--json results/tier.json]
    python benchmarks/bench_tier.py --compare 1000000      # faiss PQ fast scan vs usearch HNSW (int8), same rows

``clustered``: unit vectors around rows/50 random centres (as a photo library's embeddings cluster); ``real``: bt
embeddings (base checkpoint, 512-d) of 2,000 perturbed sample photos, each moved a little 500 times. Reported: write
and build times, disk against the raw float32 bytes, query p50/p99 (one query; 16 concurrent readers), recall@10
against exact search, the peak RSS of a query process (a fresh one: VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import CACHE, machine, table

from bridgetower_cli.index import tier as tiers
from bridgetower_cli.index.files import FileState
from bridgetower_cli.index.store import EmbeddingIndex

DIM, FOLDER, CHUNK = 512, Path("/bench"), 100_000


def source(kind: str, rows: int):
    """Chunks of the rows to index, and the queries' generator (same distribution, held out)."""
    if kind == "real":
        base = real_embeddings()

        def draw(count: int, seed: int) -> np.ndarray:
            rng = np.random.default_rng(seed)
            picked = base[rng.integers(0, len(base), count)]
            moved = picked + 0.3 / np.sqrt(DIM) * rng.standard_normal((count, DIM), dtype=np.float32)
            return moved / np.linalg.norm(moved, axis=1, keepdims=True)
    else:
        centres = np.random.default_rng(0).standard_normal((max(1, rows // 50), DIM), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)

        def draw(count: int, seed: int) -> np.ndarray:
            rng = np.random.default_rng(seed)
            moved = centres[rng.integers(0, len(centres), count)]
            moved = moved + 0.5 / np.sqrt(DIM) * rng.standard_normal((count, DIM), dtype=np.float32)
            return moved / np.linalg.norm(moved, axis=1, keepdims=True)

    return draw


def real_embeddings(count: int = 2000) -> np.ndarray:
    """bt's image embeddings (base checkpoint) of ``count`` perturbed sample photos, made once."""
    cached = CACHE / f"real-embeddings-{count}.npy"
    if not cached.exists():
        from common import checkpoint, photo_folder

        model = checkpoint("base", ("itm", "mlm", "itc"))
        done = subprocess.run([sys.executable, "-m", "bridgetower_cli", "embed", str(photo_folder(count)), "--kind",
                               "image", "-m", str(model), "-d", "cpu", "-f", "jsonl"],
                              capture_output=True, text=True, check=True)  # fmt: skip
        rows = [json.loads(line)["embedding"] for line in done.stdout.splitlines()]
        np.save(cached, np.asarray(rows, dtype=np.float32))
    return np.load(cached)


def written(path: Path, rows: int, draw) -> float:
    """The index of ``rows`` rows, written through the index API a chunk at a time: seconds."""
    for stale in path.parent.glob(f"{path.name}*"):
        stale.unlink()
    start = time.perf_counter()
    with EmbeddingIndex.for_writing(path, "bench", DIM, label="bench") as index:
        index.set_tier_from(0)  # (built below, timed on its own)
        for first in range(0, rows, CHUNK):
            vectors = draw(min(CHUNK, rows - first), first + 1)
            names = [FileState(f"{FOLDER}/d{(first + k) // 1000:05d}/{first + k:08d}.jpg", 1, 1)
                     for k in range(len(vectors))]  # fmt: skip
            index.store([(name, f"h{first + k}", vector) for k, (name, vector) in enumerate(zip(names, vectors))], [])
    return time.perf_counter() - start


def disk(path: Path) -> dict:
    files = {p.name[len(path.name) :] or "catalog": p.stat().st_size for p in path.parent.glob(f"{path.name}*")}
    return {"files": files, "total": sum(files.values())}


QUERIES = """
import json, os, statistics, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
from bridgetower_cli.index.store import EmbeddingIndex
path, queries = sys.argv[1], np.load(sys.argv[2])
folder = [Path("/bench")]
with EmbeddingIndex.for_reading(path) as index:
    index.search(queries[0], 10, folder)  # (warm: the tier read and verified once in this process)
    lone = []
    for query in queries[:200]:
        start = time.perf_counter(); index.search(query, 10, folder); lone.append(time.perf_counter() - start)
def reader(chunk):
    took = []
    with EmbeddingIndex.for_reading(path) as mine:
        for query in chunk:
            start = time.perf_counter(); mine.search(query, 10, folder); took.append(time.perf_counter() - start)
    return took
with ThreadPoolExecutor(16) as pool:
    together = [t for part in pool.map(reader, np.array_split(queries[:320], 16)) for t in part]
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps({"lone": lone, "together": together, "peak_rss_mib": rss}))
"""


def timed_queries(path: Path, queries: np.ndarray) -> dict:
    """Latencies in a fresh process (one at a time, then 16 readers at once) and its peak RSS."""
    saved = path.parent / "queries.npy"
    np.save(saved, queries)
    done = subprocess.run([sys.executable, "-c", QUERIES, str(path), str(saved)], capture_output=True, text=True,
                          check=True)  # fmt: skip
    found = json.loads(done.stdout)
    lone, together = np.asarray(found["lone"]) * 1000, np.asarray(found["together"]) * 1000
    return {"p50_ms": float(np.percentile(lone, 50)), "p99_ms": float(np.percentile(lone, 99)),
            "p50_16_ms": float(np.percentile(together, 50)), "p99_16_ms": float(np.percentile(together, 99)),
            "peak_rss_mib": found["peak_rss_mib"]}  # fmt: skip


def recall(path: Path, queries: np.ndarray) -> tuple[float, float, bool]:
    """Recall@10 of the tiered search against ``exact``; exact's p50 (ms); whether ``exact`` equals brute force on
    the first queries (1M: the matrix is read whole)."""
    found, times = 0, []
    with EmbeddingIndex.for_reading(path) as index:
        asked = queries[:100] if index.count() <= 2_000_000 else queries[:30]  # (exact at 10M: seconds each)
        for query in asked:
            tiered = set(index.search(query, 10, [FOLDER])[0])
            start = time.perf_counter()
            exact = index.search(query, 10, [FOLDER], exact=True)[0]
            times.append(time.perf_counter() - start)
            found += len(tiered & set(exact))
        matrix = index.vectors().matrix(index.count())
        same = True
        if len(matrix) <= 2_000_000:
            for query in queries[:5]:
                best = np.argsort(-(matrix @ query), kind="stable")[:10]
                slots = [index.catalog.slots_of([p])[p][0] for p in index.search(query, 10, [FOLDER], exact=True)[0]]
                same &= sorted(slots) == sorted(best.tolist())
    return found / (10 * len(asked)), statistics.median(times) * 1000, same


def one_size(rows: int, kind: str) -> dict:
    folder = CACHE / f"tier-{kind}-{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "index.sqlite"
    draw = source(kind, rows)
    write_s = written(path, rows, draw)
    with EmbeddingIndex.for_writing(path, "bench", DIM) as index:
        index.set_tier_from(tiers.TIER_FROM)
        start = time.perf_counter()
        made = index.build_tier()
        build_s = time.perf_counter() - start
    queries = draw(320, 10**9)
    hit, exact_ms, same = recall(path, queries)
    result = {"rows": rows, "kind": kind, "write_s": write_s, "build_s": build_s, "tier": made.spec,
              "tier_recall_at_build": made.recall, "candidates": made.candidates, "recall_at_10": hit,
              "exact_p50_ms": exact_ms,
              "exact_equals_brute_force": same, "disk": disk(path), "raw_bytes": rows * DIM * 4,
              **timed_queries(path, queries)}  # fmt: skip
    shutil.rmtree(folder)
    return result


def compare(rows: int) -> list[list]:
    """faiss PQ fast scan (as bt builds it) against usearch HNSW with int8 storage, on the same clustered rows."""
    from usearch.index import Index

    draw = source("clustered", rows)
    matrix = np.concatenate([draw(min(CHUNK, rows - s), s + 1) for s in range(0, rows, CHUNK)])
    queries = draw(200, 10**9)
    truth = [set(np.argsort(-(matrix @ q))[:10].tolist()) for q in queries]
    found = []
    start = time.perf_counter()
    built, spec = tiers.build(matrix)
    faiss_build = time.perf_counter() - start
    faiss_bytes = len(__import__("faiss").serialize_index(built))
    times, hits = [], 0
    for query, best in zip(queries, truth):
        t0 = time.perf_counter()
        slots = np.sort(tiers.candidates(built, query, tiers.CANDIDATES[-1]))
        top = slots[np.argsort(-(matrix[slots] @ query))[:10]]
        times.append(time.perf_counter() - t0)
        hits += len(best & set(top.tolist()))
    found.append([f"faiss {spec}", f"{faiss_build:.0f} s", f"{faiss_bytes / 2**20:.0f} MiB",
                  f"{statistics.median(times) * 1000:.1f} ms", f"{hits / 2000:.3f}"])  # fmt: skip
    start = time.perf_counter()
    hnsw = Index(ndim=DIM, metric="ip", dtype="i8", connectivity=16)
    hnsw.add(np.arange(rows), matrix, threads=os.cpu_count())
    usearch_build = time.perf_counter() - start
    saved = CACHE / "compare.usearch"
    hnsw.save(str(saved))
    times, hits = [], 0
    for query, best in zip(queries, truth):
        t0 = time.perf_counter()
        slots = np.sort(np.asarray(hnsw.search(query, tiers.CANDIDATES[-1]).keys))
        top = slots[np.argsort(-(matrix[slots] @ query))[:10]]
        times.append(time.perf_counter() - t0)
        hits += len(best & set(top.tolist()))
    found.append(["usearch HNSW i8 (M=16)", f"{usearch_build:.0f} s", f"{saved.stat().st_size / 2**20:.0f} MiB",
                  f"{statistics.median(times) * 1000:.1f} ms", f"{hits / 2000:.3f}"])  # fmt: skip
    saved.unlink()
    return found


def used(result: dict) -> str:
    """The tier's candidates and the recall it measured at its build; "not used" below ``USABLE_RECALL``."""
    shown = f"{result['candidates']} ({result['tier_recall_at_build']:.3f})"
    return shown if result["tier_recall_at_build"] >= tiers.USABLE_RECALL else f"not used: {shown}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--kind", default="clustered", choices=["clustered", "real"])
    parser.add_argument("--compare", type=int)
    parser.add_argument("--json")
    args = parser.parse_args()
    print(machine(), flush=True)
    if args.compare:
        header = ["candidates from", "build", "size", "query (candidates + float32 rescoring)", "recall@10"]
        print(f"\n{args.compare:,} x {DIM} clustered rows, {len(range(200))} held-out queries, each rescored exactly")
        print(table(header, compare(args.compare)))
        return
    results = [one_size(int(rows), args.kind) for rows in args.sizes.split(",")]
    rows = [[f"{r['rows']:,}", r["kind"], f"{r['write_s']:.0f} s", f"{r['build_s']:.0f} s",
             used(r), f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms",
             f"{r['p50_16_ms']:.0f} / {r['p99_16_ms']:.0f} ms",
             f"{r['exact_p50_ms']:.0f} ms", f"{r['recall_at_10']:.3f}", f"{r['peak_rss_mib']:.0f} MiB",
             f"{r['disk']['total'] / r['raw_bytes']:.2f}x"] for r in results]  # fmt: skip
    print(table(["rows", "vectors", "write", "tier build", "candidates (tier's recall)", "query p50 / p99",
                 "16 at once p50 / p99", "exact p50", "recall@10", "query RSS", "disk / raw"], rows))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
