"""`bt classify` at ImageNet's label count: ITC, rerank and ITM side by side on one checkpoint in one run.

    python benchmarks/bench_classify.py [--size base] [--images 100] [--labels 1000] [--itm-images 1]
                                        [--itm-labels 1000] [--json F]

Each label's prompts are encoded once (CLIP's seven templates: labels x 7 text passes), each image once; then per
image ITC costs a matrix product, rerank adds the ITM head on the shortlist's prompts (--rerank-k x 7 pairs) and ITM
runs the head on every label's prompts (labels x 7 pairs). ITM over 1,000 labels is hours on a CPU, so it runs on
--itm-images images, over the first --itm-labels labels, and its per-image time, scaled to all the labels (its cost is
one fused pair per prompt: linear in the labels), is what is compared. Labels: words of the checkpoint's vocabulary
(pairs of them when it has too few).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from common import checkpoint, machine, photo_folder, table


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--itm-images", type=int, default=1)
    parser.add_argument("--itm-labels", type=int, default=1000)
    parser.add_argument("--rerank-k", type=int, default=10)
    parser.add_argument("--json")
    return parser.parse_args()


def vocabulary_labels(runtime, count: int) -> list[str]:
    """``count`` labels spread over the words of the checkpoint's vocabulary (pairs of them when it has too few)."""
    vocabulary = runtime.tokenizer.get_vocab()
    words = sorted(w[1:] for w in vocabulary if w.startswith("Ġ") and w[1:].isalpha() and len(w) > 4)
    if len(words) < count:  # (a small vocabulary, as the locally built checkpoints have: two-word labels)
        words = [f"{a} {b}" for a in words for b in words if a != b]
    return words[:: max(1, len(words) // count)][:count]


def first_labels(encoded, count: int, templates: int):
    """The encoded labels cut to their first ``count`` (names, their prompts' states, embeddings)."""
    return dataclasses.replace(
        encoded,
        names=encoded.names[:count],
        states=encoded.states[: count * templates],
        embeddings=encoded.embeddings[:count],
    )


def main() -> None:
    args = arguments()
    print(machine())
    from bridgetower_cli.model.loading import load_model
    from bridgetower_cli.model.runtime import Runtime
    from bridgetower_cli.records import Outcome, Reporter
    from bridgetower_cli.sources import expand_image_sources
    from bridgetower_cli.tasks import classify
    from bridgetower_cli.tasks.batching import encode_image_batches
    from bridgetower_cli.tasks.labels import DEFAULT_TEMPLATES

    path = checkpoint(args.size, ("itm", "mlm", "itc"))
    runtime = Runtime(load_model(path, str(path), "cpu", "float32"))
    labels = vocabulary_labels(runtime, args.labels)
    templates = list(DEFAULT_TEMPLATES)
    sources = expand_image_sources([str(photo_folder(args.images))])
    batch, reporter = runtime.default_batch_size, Reporter()

    start = time.perf_counter()
    encoded = classify.encode_labels(runtime, labels, templates, batch, reporter)
    text_s = time.perf_counter() - start
    start = time.perf_counter()
    batches = encode_image_batches(runtime, sources, batch, Outcome(), reporter)
    images = [state for chunk in batches for _, state in chunk]
    vision_s = time.perf_counter() - start

    def per_image(method: str, count: int, labels=encoded) -> tuple[float, list]:
        start, best = time.perf_counter(), []
        for image in images[:count]:
            scored, scores = classify.label_scores(runtime, image, labels, method, args.rerank_k, batch)
            best.append(scored[int(scores.argmax())])
        return (time.perf_counter() - start) / count, best

    itc_s, itc_best = per_image("itc", len(images))
    rerank_s, _ = per_image("rerank", len(images))
    itm_labels = min(args.itm_labels, len(labels))
    itm_s, _ = per_image("itm", args.itm_images, first_labels(encoded, itm_labels, len(templates)))
    itm_s *= len(labels) / itm_labels  # (one fused pair per prompt: linear in the labels)
    report(
        args,
        {
            "size": args.size,
            "images": len(images),
            "labels": len(labels),
            "templates": len(templates),
            "text_s": text_s,
            "vision_s": vision_s,
            "itc_per_image_s": itc_s,
            "rerank_per_image_s": rerank_s,
            "itm_per_image_s": itm_s,
            "itm_measured_labels": itm_labels,
            "itc_top1": itc_best[:10],
        },
    )


def report(args: argparse.Namespace, results: dict) -> None:
    """The steps' table, the whole command's time per method, and (--json) ``results``."""
    images, labels, templates = results["images"], results["labels"], results["templates"]
    text_s, vision_s, itm_labels = results["text_s"], results["vision_s"], results["itm_measured_labels"]
    itc_s, rerank_s, itm_s = (results[f"{m}_per_image_s"] for m in ("itc", "rerank", "itm"))
    prompts = labels * templates
    rows = [
        ["labels' prompts, once", f"{prompts} text passes", f"{text_s:.1f} s", ""],
        ["images, once", f"{images} vision passes", f"{vision_s:.1f} s", f"{vision_s / images:.3f} s"],
        ["itc (per image)", "1 matrix product", f"{itc_s * images:.2f} s", f"{itc_s * 1000:.2f} ms"],
        ["rerank (per image)", f"{args.rerank_k * templates} ITM pairs", f"{rerank_s * images:.1f} s",
         f"{rerank_s:.2f} s"],
        ["itm (per image)", f"{prompts} ITM pairs", f"~{itm_s * images:.0f} s (from {args.itm_images})",
         f"{itm_s:.1f} s" + ("" if itm_labels == labels else f" (from {itm_labels} labels)")],
    ]  # fmt: skip
    print(f"\n{images} images x {labels} labels x {templates} templates, {args.size}, fp32, CPU")
    print(table(["step", "work", "total", "per image"], rows))
    print(
        f"\nwhole classify, {images} images: itc {text_s + vision_s + itc_s * images:.0f} s, rerank "
        f"{text_s + vision_s + rerank_s * images:.0f} s, itm ~{text_s + vision_s + itm_s * images:.0f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
