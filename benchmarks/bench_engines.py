"""`bt index --engine ray` against the local engine on the same images, side by side in one run.

    python benchmarks/bench_engines.py [--images 240] [--phone 60]

1. the base checkpoint on --images distinct photos (model-bound on 2 cores): images/s of both engines;
2. the tiny checkpoint on --phone 12-megapixel JPEGs (decoding-bound): the local engine decodes and embeds in turn,
   Ray decodes in CPU tasks while the model actor works.
Each run is a fresh `bt index` process with a fresh index (Ray's start-up included, as a user pays it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import CACHE, SAMPLES, checkpoint, machine, photo_folder, table


def phone_photos(count: int) -> Path:
    """``count`` distinct 4000 x 3000 JPEGs (12 MP), made once."""
    from PIL import Image

    folder = CACHE / f"phone-{count}"
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.open(SAMPLES / "rocket.jpg").convert("RGB").resize((4000, 3000))
    for k in range(count):
        base.rotate(k % 360).save(folder / f"phone{k:04d}.jpg", quality=90)
    return folder


def run(folder: Path, model: Path, engine: str, batch_size: int) -> float:
    index = CACHE / f"engine-{engine}.sqlite"
    for stale in CACHE.glob(f"engine-{engine}.sqlite*"):
        stale.unlink()
    env = dict(os.environ, BT_DEVICE="cpu")
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bridgetower_cli",
            "index",
            str(folder),
            "-m",
            str(model),
            "--index",
            str(index),
            "--engine",
            engine,
            "-b",
            str(batch_size),
            "-q",
            "-f",
            "json",
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--phone", type=int, default=60)
    parser.add_argument("--json")
    args = parser.parse_args()
    print(machine())
    cases = [
        ("base, photos", photo_folder(args.images), checkpoint("base", ("itm", "mlm", "itc")), args.images, 8),
        ("tiny, 12 MP JPEGs", phone_photos(args.phone), checkpoint("tiny", ("itm", "mlm", "itc")), args.phone, 4),
    ]
    rows, results = [], {}
    for label, folder, model, count, batch in cases:
        local = run(folder, model, "local", batch)
        on_ray = run(folder, model, "ray", batch)
        results[label] = {"images": count, "local_s": local, "ray_s": on_ray}
        rows.append(
            [label, count, f"{count / local:.2f} img/s", f"{count / on_ray:.2f} img/s", f"{on_ray / local:.2f}"]
        )
    print(table(["case", "images", "local engine", "Ray engine", "Ray time / local time"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
