"""`bt score` vs the documented transformers loop, side by side on the same inputs and checkpoint.

    python benchmarks/bench_score.py [--device cpu|cuda] [--repeats 3] [--cases 1x16,4x4] [--dtypes float32,bfloat16]

The documented loop is the one in the BridgeTowerForImageAndTextRetrieval docstring: for each pair,
``processor(image, text)`` then the stock forward, reading ``logits[0, 1]``. bt's side is ``tasks.score`` on the
runtime (image and text encoded once, cross-modal stack per pair), preprocessing included.
"""

from __future__ import annotations

import argparse
import json

import torch
from common import IMAGES, SAMPLES, TEXTS, checkpoint, machine, table, timed
from PIL import Image
from transformers import BridgeTowerForImageAndTextRetrieval, BridgeTowerProcessor

from bridgetower_cli.model.loading import load_model
from bridgetower_cli.model.runtime import Runtime
from bridgetower_cli.records import Outcome
from bridgetower_cli.sources import ImageSource
from bridgetower_cli.tasks import pairs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def documented_loop(path, device, dtype, images, texts):
    processor = BridgeTowerProcessor.from_pretrained(path)
    model = BridgeTowerForImageAndTextRetrieval.from_pretrained(path, dtype=dtype).eval().to(device)

    @torch.no_grad()
    def run():
        logits = []
        for image in images:
            for text in texts:
                encoding = processor(image, text, return_tensors="pt").to(device)
                logits.append(model(**encoding).logits[0, 1].float().item())
        return logits

    return run


def bt_score(path, device, dtype_name, sources, texts, batch_size):
    runtime = Runtime(load_model(path, "base", device, dtype_name))

    def run():
        records = list(pairs.score(runtime, sources, texts, Outcome(), batch_size))
        by_pair = {(r.image, r.text): r.logit for r in records}
        return [by_pair[(s.name, t)] for s in sources for t in texts]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtypes", default="float32,bfloat16", help="which of float32,bfloat16 to run")
    parser.add_argument("--cases", default="1x16,4x4", help="which of 1x16,4x4 to run")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    path = checkpoint("base", ("itm", "mlm"))
    print(f"machine: {machine()}; device {args.device}; checkpoint {path}", flush=True)

    every = {"1x16": ("1 image x 16 texts", IMAGES[:1], TEXTS), "4x4": ("4 images x 4 texts", IMAGES[:4], TEXTS[:4])}
    cases = {every[c][0]: every[c][1:] for c in args.cases.split(",")}
    rows, results, fp32_logits = [], [], {}
    for dtype_name in args.dtypes.split(","):
        for case, (names, texts) in cases.items():
            images = [Image.open(SAMPLES / n).convert("RGB") for n in names]
            sources = [ImageSource(str(SAMPLES / n), path=str(SAMPLES / n)) for n in names]
            stock_s, stock = timed(documented_loop(path, args.device, DTYPES[dtype_name], images, texts), args.repeats)
            bt_s, mine = timed(bt_score(path, args.device, dtype_name, sources, texts, args.batch_size), args.repeats)
            diff = max(abs(a - b) for a, b in zip(stock, mine))
            if dtype_name == "float32":
                fp32_logits[case] = stock
            elif case not in fp32_logits:
                fp32_logits[case] = documented_loop(path, args.device, torch.float32, images, texts)()
            vs_fp32 = max(abs(a - b) for a, b in zip(fp32_logits[case], mine))
            row = [
                case,
                dtype_name,
                f"{stock_s:.2f} s",
                f"{bt_s:.2f} s",
                f"{stock_s / bt_s:.2f}x",
                f"{diff:.1e}",
                f"{vs_fp32:.1e}",
            ]
            rows.append(row)
            results.append(
                dict(
                    zip(
                        ["case", "dtype", "stock_s", "bt_s", "speedup", "diff_vs_stock", "diff_vs_fp32"],
                        [case, dtype_name, stock_s, bt_s, stock_s / bt_s, diff, vs_fp32],
                    )
                )
            )
            print(
                table(
                    [
                        "case",
                        "dtype",
                        "documented loop",
                        "bt",
                        "speed-up",
                        "max |Δlogit| vs loop",
                        "max |Δlogit| vs fp32",
                    ],
                    rows[-1:],
                ),
                flush=True,
            )
    header = [
        "case",
        "dtype",
        "documented loop",
        "bt",
        "speed-up",
        "max |Δlogit| vs loop (same dtype)",
        "max |Δlogit| vs fp32 loop",
    ]
    print("\n" + table(header, rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine(), "device": args.device, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
