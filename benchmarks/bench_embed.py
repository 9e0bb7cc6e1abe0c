"""`bt embed --kind image` throughput vs the model alone on the same preprocessed tensors.

    python benchmarks/bench_embed.py [--size base] [--device cpu] [--dtype float32] [--images 32] [--batch-size 8]
                                     [--repeats 2] [--phone] [--json F]

bt's side reads, decodes and preprocesses the files (in its decode threads), runs the vision tower once per image and
the ITC image head; the model-alone side runs only the stock vision model on tensors preprocessed beforehand. With
--phone the photos are 12-megapixel JPEGs and bt runs twice more, with --fast-decode: on a GPU the question is
whether decoding keeps up (the goal: bt at 0.8 of the model alone or better).
"""

from __future__ import annotations

import argparse
import json

import torch
from common import checkpoint, machine, photo_folder, table, timed

from bridgetower_cli.model import runtime_for
from bridgetower_cli.model.loading import load_model
from bridgetower_cli.reading import load_image
from bridgetower_cli.records import Outcome
from bridgetower_cli.sources import expand_image_sources
from bridgetower_cli.tasks import pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="base", choices=["tiny", "base", "large"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--phone", action="store_true", help="12-megapixel JPEGs (and a --fast-decode run)")
    parser.add_argument("--json")
    args = parser.parse_args()
    path = checkpoint(args.size, ("itm", "mlm", "itc"))
    if args.phone:
        from bench_engines import phone_photos

        folder = phone_photos(args.images)
    else:
        folder = photo_folder(args.images)
    sources = expand_image_sources([str(folder)])
    runtime = runtime_for(load_model(path, args.size, args.device, args.dtype))
    pixels = torch.stack([runtime.pixel_values(load_image(s)) for s in sources])
    vision = runtime.tower.vision_model

    @torch.inference_mode()
    def model_alone():
        for start in range(0, len(pixels), args.batch_size):
            batch = pixels[start : start + args.batch_size].to(runtime.device, vision.dtype)
            if args.dtype == "int8":
                runtime.encode_images(batch)
            else:
                vision(batch)
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()

    def bt(fast: bool):
        def run():
            runtime.fast_decode = fast
            return len(list(pairs.embed(runtime, "image", Outcome(), sources, batch_size=args.batch_size)))

        return run

    alone_s, _ = timed(model_alone, args.repeats)
    results = {"machine": machine(), "size": args.size, "device": args.device, "dtype": args.dtype}
    results |= {"images": args.images, "phone": args.phone, "model_alone_s": alone_s}
    rows = []
    for name, fast in [("bt embed --kind image", False)] + ([("... --fast-decode", True)] if args.phone else []):
        seconds, count = timed(bt(fast), args.repeats)
        assert count == args.images
        results[f"bt_s{'_fast_decode' if fast else ''}"] = seconds
        rows.append([name, f"{args.images / alone_s:.2f} img/s", f"{args.images / seconds:.2f} img/s",
                     f"{alone_s / seconds:.2f}"])  # fmt: skip
    print(f"machine: {machine()}; {args.size}, {args.device}, {args.dtype}, {args.images} {folder.name}")
    print(table(["case", "model alone", "bt", "bt / model alone"], rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
