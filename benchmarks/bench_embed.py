"""`bt embed --kind image` throughput vs a bare batched vision forward on the same preprocessed tensors.

    python benchmarks/bench_embed.py [--images 32] [--batch-size 8] [--repeats 2]

bt's side reads, decodes and preprocesses the files, runs the vision tower once per image and the ITC image head;
the bare side runs only the stock vision model on tensors preprocessed beforehand.
"""

from __future__ import annotations

import argparse
import json

import torch
from common import checkpoint, machine, photo_folder, table, timed

from bridgetower_cli.model.loading import load_model
from bridgetower_cli.model.runtime import Runtime
from bridgetower_cli.reading import load_image
from bridgetower_cli.records import Outcome
from bridgetower_cli.sources import expand_image_sources
from bridgetower_cli.tasks import pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    path = checkpoint("base", ("itm", "mlm", "itc"))
    sources = expand_image_sources([str(photo_folder(args.images))])
    runtime = Runtime(load_model(path, "base", "cpu", "float32"))
    pixels = torch.stack([runtime.pixel_values(load_image(s)) for s in sources])
    vision = runtime.tower.vision_model

    @torch.inference_mode()
    def bare():
        for start in range(0, len(pixels), args.batch_size):
            vision(pixels[start : start + args.batch_size])

    def bt():
        return len(list(pairs.embed(runtime, "image", Outcome(), sources, batch_size=args.batch_size)))

    bare_s, _ = timed(bare, args.repeats)
    bt_s, count = timed(bt, args.repeats)
    assert count == args.images
    rows = [
        [
            f"{args.images} images",
            f"{args.images / bare_s:.2f} img/s",
            f"{args.images / bt_s:.2f} img/s",
            f"{bare_s / bt_s:.2f}",
        ]
    ]
    print(f"machine: {machine()}")
    print(table(["case", "bare vision forward", "bt embed --kind image", "bt / bare"], rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine(), "bare_s": bare_s, "bt_s": bt_s, "images": args.images}, fh, indent=2)


if __name__ == "__main__":
    main()
