"""`bt eval` (the BridgeTower protocol: ITC shortlist, ITM on each image's and caption's k_test best) against scoring
all pairs with ITM, on the same caption set in the same run.

    python benchmarks/bench_eval.py [--size base] [--images 30] [--k-test 4]

Both sides use bt's runtime (each image and caption encoded once); they differ only in how many pairs go through
the cross-modal encoder. With k_test >= the set's size the protocol is all pairs, so the two recalls agree there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import CACHE, TEXTS, checkpoint, machine, photo_folder, table


def caption_file(images: int) -> Path:
    folder = photo_folder(images)
    path = CACHE / f"captions-{images}.json"
    entries = [
        {
            "filename": photo.name,
            "split": "test",
            "sentences": [{"raw": TEXTS[(2 * k) % len(TEXTS)]}, {"raw": TEXTS[(2 * k + 1) % len(TEXTS)] + f" ({k})"}],
        }
        for k, photo in enumerate(sorted(folder.glob("*.jpg")))
    ]
    path.write_text(json.dumps({"images": entries}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--k-test", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args()

    from bridgetower_cli.model.loading import load_model
    from bridgetower_cli.model.runtime import Runtime
    from bridgetower_cli.records import Outcome
    from bridgetower_cli.tasks.evaluation import evaluate, load_caption_set

    path = checkpoint(args.size, ("itm", "mlm", "itc"))
    runtime = Runtime(load_model(path, args.size, "auto", "float32"))
    annotations = caption_file(args.images)
    caption_set = load_caption_set(annotations, annotations.parent / f"photos-{args.images}")
    runs = {}
    for label, k_test in (("protocol", args.k_test), ("all pairs", 10**9)):
        start = time.perf_counter()
        record = evaluate(runtime, caption_set, Outcome(), k_test, batch_size=args.batch_size)
        runs[label] = (time.perf_counter() - start, record)
    print(machine())
    print(f"{args.size} checkpoint, {len(caption_set.images)} images, {len(caption_set.texts)} captions, fp32")
    rows = [
        [
            label,
            f"k_test {args.k_test}" if label == "protocol" else "every pair",
            r.pairs_scored,
            f"{s:.1f} s",
            f"{r.txt_r1:.1f} / {r.img_r1:.1f}",
        ]
        for label, (s, r) in runs.items()
    ]
    print(table(["run", "ITM on", "pairs scored", "time", "R@1 txt / img"], rows))
    ratio = runs["all pairs"][0] / runs["protocol"][0]
    print(f"protocol is {ratio:.2f}x faster than all pairs")
    if args.json:
        Path(args.json).write_text(
            json.dumps({label: {"seconds": s, "pairs": r.pairs_scored} for label, (s, r) in runs.items()}, indent=2)
        )


if __name__ == "__main__":
    main()
