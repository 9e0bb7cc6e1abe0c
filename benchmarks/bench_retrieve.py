"""`bt retrieve` benchmarks: query time vs folder size, query vs scoring every pair, index build throughput.

    python benchmarks/bench_retrieve.py [--skip-base]

1. tiny checkpoint, warm index, fixed --rerank-k 5: per-query time over 200 vs 2000 images, as the `bt retrieve`
   command end to end, and in process with the model loaded once (the index refresh check — a walk and a stat per
   file —, the text pass, the similarity search and the ITM rerank);
2. base checkpoint (ITC + ITM), 100 images, --rerank-k 10: query time vs the documented way to rank them (processor
   + stock ITM forward for every pair);
3. base checkpoint: index build throughput (images/s) vs a bare vision forward on the same preprocessed images.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import CACHE, checkpoint, machine, photo_folder, table, timed
from PIL import Image
from transformers import BridgeTowerForImageAndTextRetrieval, BridgeTowerProcessor

from bridgetower_cli.index.store import EmbeddingIndex
from bridgetower_cli.model.hub import fingerprint
from bridgetower_cli.model.loading import load_model
from bridgetower_cli.model.runtime import Runtime
from bridgetower_cli.reading import load_image
from bridgetower_cli.records import Outcome
from bridgetower_cli.sources import expand_image_sources
from bridgetower_cli.tasks import indexing
from bridgetower_cli.tasks import retrieve as retrieval

QUERY = "two cats sitting on a couch"


def open_index(runtime, path: Path, rebuild=False) -> EmbeddingIndex:
    loaded = runtime.loaded
    dim = loaded.network.config.contrastive_hidden_size
    return EmbeddingIndex.for_writing(path, fingerprint(loaded.path), dim, rebuild)


def query(runtime, index, folder, rerank_k):
    """One query as `bt retrieve` runs it: refresh (nothing to do), search, rerank."""
    sources = expand_image_sources([str(folder)])
    return retrieval.retrieve_images(
        runtime, QUERY, sources, Outcome(), [folder], index.path, top_k=10, rerank_k=rerank_k
    )


def folder_scaling(repeats: int) -> list:
    path = checkpoint("tiny", ("itm", "mlm", "itc"))
    runtime = Runtime(load_model(path, "tiny", "cpu", "float32"))
    times, cli = {}, {}
    for count in (200, 2000):
        folder = photo_folder(count)
        index = open_index(runtime, CACHE / f"index-tiny-{count}.sqlite")
        indexing.refresh_index(runtime, index, expand_image_sources([str(folder)]), Outcome(), [folder])
        times[count], _ = timed(lambda index=index, folder=folder: query(runtime, index, folder, 5), repeats)
        command = [sys.executable, "-m", "bridgetower_cli", "retrieve", QUERY, str(folder), "-m", str(path)]
        command += ["--index", str(CACHE / f"index-tiny-{count}.sqlite"), "-r", "5", "-d", "cpu", "-f", "json"]
        cli[count], _ = timed(lambda command=command: subprocess.run(command, check=True, capture_output=True), repeats)
    return [
        [
            "tiny, `bt retrieve` command end to end",
            f"{cli[200]:.2f} s",
            f"{cli[2000]:.2f} s",
            f"{cli[2000] / cli[200]:.2f}",
        ],
        [
            "tiny, query in process (model loaded)",
            f"{times[200] * 1000:.0f} ms",
            f"{times[2000] * 1000:.0f} ms",
            f"{times[2000] / times[200]:.2f}",
        ],
    ]


def base_query(repeats: int) -> tuple[list, list]:
    path = checkpoint("base", ("itm", "mlm", "itc"))
    folder = photo_folder(100)
    runtime = Runtime(load_model(path, "base", "cpu", "float32"))
    sources = expand_image_sources([str(folder)])
    with tempfile.TemporaryDirectory() as tmp:
        index_path = Path(tmp) / "index.sqlite"

        def build():
            index = open_index(runtime, index_path, rebuild=True)
            indexing.refresh_index(runtime, index, sources, Outcome(), [folder])
            return index

        build_s, index = timed(build, 1, warmup=0)
        pixels = torch.stack([runtime.pixel_values(load_image(s)) for s in sources])

        @torch.inference_mode()
        def bare():
            for start in range(0, len(pixels), 8):
                runtime.tower.vision_model(pixels[start : start + 8])

        bare_s, _ = timed(bare, 1, warmup=0)
        query_s, hits = timed(lambda: query(runtime, index, folder, 10), repeats)

    processor = BridgeTowerProcessor.from_pretrained(path)
    model = BridgeTowerForImageAndTextRetrieval.from_pretrained(path).eval()

    @torch.no_grad()
    def documented():
        scores = {}
        for source in sources:
            encoding = processor(Image.open(source.path).convert("RGB"), QUERY, return_tensors="pt")
            scores[source.name] = model(**encoding).logits[0, 1].item()
        return scores

    stock_s, scores = timed(documented, 1, warmup=0)
    worst = max(abs(h.logit - scores[h.image]) for h in hits if h.logit is not None)
    print(f"reranked logits vs the documented loop: max |diff| {worst:.1e}")
    query_row = ["base, 100 images, --rerank-k 10", f"{stock_s:.1f} s", f"{query_s:.2f} s", f"{stock_s / query_s:.1f}x"]
    build_row = [
        "base, 100 images",
        f"{100 / bare_s:.2f} img/s",
        f"{100 / build_s:.2f} img/s",
        f"{bare_s / build_s:.2f}",
    ]
    assert worst <= 1e-4
    return [query_row], [build_row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-base", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    results = {"machine": machine()}
    scaling = folder_scaling(args.repeats)
    results["scaling"] = scaling
    print(table(["case", "200 images", "2000 images", "ratio"], scaling), flush=True)
    if not args.skip_base:
        query_rows, build_rows = base_query(args.repeats)
        results["query"], results["build"] = query_rows, build_rows
        print(table(["case", "documented loop, all pairs", "bt retrieve", "speed-up"], query_rows))
        print(table(["index build", "bare vision forward", "bt index", "bt / bare"], build_rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
