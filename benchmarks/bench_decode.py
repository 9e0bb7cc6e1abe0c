"""Decoding that keeps up: `bt index` (local engine) on 12-megapixel JPEGs with and without --fast-decode and decode
threads, side by side in one run; and how far --fast-decode moves the embeddings.

    python benchmarks/bench_decode.py [--phone 60] [--json results/decode.json]

1. The tiny checkpoint on --phone 4000 x 3000 JPEGs (decoding-bound, as in bench_engines.py): one decode thread and
   a full decode (as before: one image decoded at a time), decode threads (BT_DECODE_WORKERS, default one per
   core up to four), --fast-decode, and both. Each run is a fresh `bt index` process with a fresh index.
2. Embeddings (ITC) of fast-decoded against fully decoded photos, tiny and base: cosine and max |delta|.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_engines import phone_photos
from common import checkpoint, machine, table

HEADS = ("itm", "mlm", "itc")


def index_seconds(folder: Path, model: Path, workers: str, fast: bool, scratch: Path) -> float:
    index = scratch / f"index-{workers}-{fast}.sqlite"
    env = dict(os.environ, BT_DEVICE="cpu", BT_DECODE_WORKERS=workers)
    command = [sys.executable, "-m", "bridgetower_cli", "index", str(folder), "-m", str(model), "--index",
               str(index), "-b", "4", "-q", "-f", "json"] + (["--fast-decode"] if fast else [])  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def embedding_shift(size: str, photos: list[Path]) -> dict:
    """ITC embeddings of ``photos`` decoded in full and fast."""
    from bridgetower_cli.model.loading import load_model
    from bridgetower_cli.model.runtime import Runtime

    runtime = Runtime(load_model(checkpoint(size, HEADS), size, "cpu", "float32"))
    embeddings = {}
    for fast in (False, True):
        runtime.fast_decode = fast
        pixels = torch.stack([runtime.prepare_image(p.read_bytes())[2] for p in photos])
        embeddings[fast] = torch.stack([s.itc_embedding for s in runtime.encode_images(pixels)])
    cosines = torch.cosine_similarity(embeddings[False], embeddings[True], dim=1)
    return {
        "size": size,
        "photos": len(photos),
        "cosine_min": round(cosines.min().item(), 5),
        "cosine_mean": round(cosines.mean().item(), 5),
        "max_abs_delta": round((embeddings[False] - embeddings[True]).abs().max().item(), 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phone", type=int, default=60)
    parser.add_argument("--json")
    args = parser.parse_args()
    print(machine())
    folder, model = phone_photos(args.phone), checkpoint("tiny", HEADS)
    default_workers = str(min(4, os.cpu_count() or 1))
    cases = [
        ("one decode thread, full decode (before)", "1", False),
        (f"{default_workers} decode threads", default_workers, False),
        ("--fast-decode, one decode thread", "1", True),
        (f"--fast-decode, {default_workers} decode threads (default threads)", default_workers, True),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, workers, fast in cases:
            seconds = index_seconds(folder, model, workers, fast, Path(scratch))
            rows.append({"case": name, "seconds": round(seconds, 1), "images_per_s": round(args.phone / seconds, 2)})
            print(f"  {name}: {seconds:.1f} s", flush=True)
    before = rows[0]["images_per_s"]
    print(f"\n1. bt index, tiny, {args.phone} 12-megapixel JPEGs")
    cells = [[r["case"], r["seconds"], r["images_per_s"], f"{r['images_per_s'] / before:.2f}x"] for r in rows]
    print(table(["case", "s", "images/s", "vs before"], cells))
    photos = sorted(folder.glob("*.jpg"))[:16]
    shifts = [embedding_shift(size, photos) for size in ("tiny", "base")]
    print("\n2. --fast-decode against a full decode, ITC image embeddings of 12 MP photos")
    print(table(list(shifts[0]), [list(s.values()) for s in shifts]))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "index": rows, "embeddings": shifts}, indent=1))


if __name__ == "__main__":
    main()
