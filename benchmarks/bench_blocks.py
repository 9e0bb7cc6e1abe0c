"""What checking every block of an index's vectors before a ranking costs, next to the ranking itself: at 1M x 512
rows (float32, 2 GB, and its float16 copy), written to a real file and memory-mapped as the index maps it.

    python benchmarks/bench_blocks.py [--rows 1000000] [--json results/blocks.json]

Per copy, in one run: the matrix product of one query (what the search step reads), the block checksums of the same
bytes (``index.blocks``: a sum of 64-bit words per block of 1,024 rows), and the ratio; the first pass of each with
the file just written (in the page cache), then the median of five. A long-lived process (a server) verifies a file
once per change, so only a CLI call pays this per query.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, table

from bridgetower_cli.index import blocks
from bridgetower_cli.index import search as index_search

DIM = 512


def timed(call, repeat: int = 5) -> tuple[float, float]:
    """(the first run's seconds, the median of ``repeat`` more)."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        runs.append(time.perf_counter() - start)
    return first, statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--json")
    args = parser.parse_args()
    print(machine())
    rng = np.random.default_rng(0)
    query = rng.normal(size=DIM).astype(np.float32)
    results, lines = {}, []
    with tempfile.TemporaryDirectory() as folder:
        for name, dtype in (("float32", np.float32), ("float16 copy", np.float16)):
            path = Path(folder) / name
            with open(path, "wb") as file:  # written in chunks: never the whole matrix in memory at once
                for start in range(0, args.rows, 65536):
                    rows = min(65536, args.rows - start)
                    file.write(rng.normal(size=(rows, DIM)).astype(dtype).tobytes())
            matrix = np.memmap(path, dtype=dtype, mode="r", shape=(args.rows, DIM))
            score = index_search._half_scores if dtype == np.float16 else np.matmul  # (as the search scores it)
            product = timed(lambda m=matrix, score=score: score(m, query))
            checks = timed(lambda m=matrix: blocks._sums(m, 0, len(m)))
            results[name] = {"product_s": product, "blocks_s": checks, "ratio": checks[1] / product[1]}
            lines.append([name, f"{product[1] * 1000:.0f}", f"{checks[1] * 1000:.0f}", f"{checks[1] / product[1]:.2f}"])
            del matrix
    print(f"{args.rows:,} rows x {DIM} (median of five; first runs in the JSON):")
    print(table(["copy", "query product, ms", "block checks, ms", "checks / product"], lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": args.rows, "dim": DIM, **results}, indent=2))


if __name__ == "__main__":
    main()
