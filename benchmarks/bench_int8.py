"""int8 on CPUs: the candidate runtimes side by side in one run, then how close bt's int8 is to float32.

    python benchmarks/bench_int8.py [--size base] [--batch 8] [--fidelity-images 1000] [--json results/int8.json]

1. Runtimes, the image pass of --size (what `bt index`/`bt embed` spend their time on), --batch images per call:
   torch float32 (bt's default), torch's own dynamic int8 (nn.Linear), ONNX Runtime float32 and dynamic int8 (what
   `--dtype int8` runs), and OpenVINO float32 and int8 (NNCF weight compression) when installed. Throughput, cosine
   of the ITC embedding to float32, install size, start-up.
2. Fidelity of `--dtype int8` against float32 on --fidelity-images photos, tiny and base: cosine of image and text
   embeddings, top-10 retrieval agreement for 16 text queries, max |delta| of ITM logits and probabilities.
3. `bt embed --kind image` on 64 photos, float32 against int8: the whole command, as a user runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import TEXTS, checkpoint, machine, photo_folder, table

from bridgetower_cli.model import runtime_for
from bridgetower_cli.model.loading import load_model
from bridgetower_cli.model.runtime import Runtime

HEADS = ("itm", "mlm", "itc")


def installed_mb(*distributions: str) -> float:
    """Disk size of installed distributions (their files, as pip lists them)."""
    total = 0
    for name in distributions:
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        total += sum(f.locate().stat().st_size for f in files if f.locate().is_file())
    return round(total / 2**20, 1)


def images_per_s(encode, batch: torch.Tensor, repeats: int) -> float:
    encode(batch)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        encode(batch)
        times.append(time.perf_counter() - start)
    return batch.shape[0] / statistics.median(times)


def itc(states) -> torch.Tensor:
    return torch.stack([s.itc_embedding for s in states])


def runtimes(size: str, batch_size: int, repeats: int) -> list[dict]:
    """Section 1: each candidate's image pass on the same batch."""
    path = checkpoint(size, HEADS)
    exact = Runtime(load_model(path, size, "cpu", "float32"))
    photos = sorted(photo_folder(64).glob("*.jpg"))[:batch_size]
    from PIL import Image

    batch = torch.stack([exact.pixel_values(Image.open(p).convert("RGB")) for p in photos])
    reference = itc(exact.encode_images(batch))
    rows = []

    def row(name, encode, embeddings, startup, install) -> dict:
        speed = images_per_s(encode, batch, repeats)
        cosine = torch.cosine_similarity(embeddings, reference, dim=1).min().item()
        rows.append({"runtime": name, "images_per_s": round(speed, 2), "cosine_min": round(cosine, 5),
                     "startup_s": startup, "install_mb": install})  # fmt: skip
        print(f"  {name}: {speed:.2f} img/s, cosine {cosine:.5f}", flush=True)
        return rows[-1]

    row("torch float32 (default)", exact.encode_images, reference, 0.0, installed_mb("torch"))

    start = time.perf_counter()
    quantized_network = torch.ao.quantization.quantize_dynamic(exact.network, {torch.nn.Linear}, dtype=torch.qint8)
    torch_int8 = Runtime(dataclasses.replace(exact.loaded, network=quantized_network))
    startup = round(time.perf_counter() - start, 2)
    row("torch dynamic int8", torch_int8.encode_images, itc(torch_int8.encode_images(batch)), startup, 0.0)

    with tempfile.TemporaryDirectory() as scratch:
        graph = onnx_runtimes(row, exact, batch, path, size, Path(scratch))
        openvino_runtimes(row, graph, batch)
    return rows


def onnx_runtimes(row, exact: Runtime, batch: torch.Tensor, path: Path, size: str, scratch: Path) -> Path:
    """ONNX Runtime float32 on the image pass exported to ``scratch``, then bt's own --dtype int8 (its graphs
    built once, then loaded from the cache): the exported graph."""
    import onnxruntime as ort

    from bridgetower_cli.model import int8

    onnx_mb = installed_mb("onnxruntime", "onnx")
    graph = scratch / "image.onnx"
    module = int8._ImagePass(exact)
    start = time.perf_counter()
    torch.onnx.export(module, (batch,), str(graph), input_names=["pixel_values"], output_names=["layers", "itc"],
                      dynamic_axes={"pixel_values": {0: "batch"}}, opset_version=17, dynamo=False)  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    startup = round(time.perf_counter() - start, 2)

    def ort_fp32(pixels):
        return session.run(None, {"pixel_values": pixels.numpy()})

    row("ONNX Runtime float32", ort_fp32, torch.from_numpy(ort_fp32(batch)[1]), startup, onnx_mb)

    os.environ["BT_INT8_CACHE"] = str(scratch / "cache")
    start = time.perf_counter()
    quantized = runtime_for(load_model(path, size, "cpu", "int8"))
    built = time.perf_counter() - start
    start = time.perf_counter()
    runtime_for(load_model(path, size, "cpu", "int8"))
    cached = time.perf_counter() - start
    print(f"  int8 graphs: built in {built:.1f} s (once), loaded from the cache in {cached:.1f} s", flush=True)
    added = row("ONNX Runtime dynamic int8 (--dtype int8)", quantized.encode_images,
                itc(quantized.encode_images(batch)), round(cached, 2), onnx_mb)  # fmt: skip
    added["build_s"] = round(built, 2)
    return graph


def openvino_runtimes(row, graph: Path, batch: torch.Tensor) -> None:
    """OpenVINO float32 and int8 weights (NNCF) on the exported ``graph``, when installed."""
    try:
        import openvino as ov
    except ImportError:
        print("  OpenVINO not installed: skipped (pip install openvino nncf)")
        return
    core = ov.Core()
    core.set_property("CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads()})
    ov_mb = installed_mb("openvino", "nncf")
    start = time.perf_counter()
    model = core.read_model(str(graph))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    startup = round(time.perf_counter() - start, 2)

    def ov_run(target):
        return lambda pixels: target(pixels.numpy())

    row("OpenVINO float32", ov_run(compiled), torch.from_numpy(compiled(batch.numpy())[1]), startup, ov_mb)
    try:
        import nncf
    except ImportError:
        return
    nncf.set_log_level(logging.ERROR)
    start = time.perf_counter()
    compressed = nncf.compress_weights(core.read_model(str(graph)), mode=nncf.CompressWeightsMode.INT8_ASYM)
    compiled_int8 = core.compile_model(compressed, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    startup = round(time.perf_counter() - start, 2)
    embeddings = torch.from_numpy(compiled_int8(batch.numpy())[1])
    row("OpenVINO int8 weights (NNCF)", ov_run(compiled_int8), embeddings, startup, ov_mb)


def fidelity(size: str, count: int, batch_size: int) -> dict:
    """Section 2: --dtype int8 against float32 over ``count`` photos and the benchmark's 16 texts."""
    from bridgetower_cli.records import Outcome, Reporter
    from bridgetower_cli.sources import ImageSource
    from bridgetower_cli.tasks.batching import encode_image_batches

    path = checkpoint(size, HEADS)
    sources = [ImageSource(p.name, path=str(p)) for p in sorted(photo_folder(count).glob("*.jpg"))]
    result = {"size": size, "images": count}
    embedded = {}
    for dtype in ("float32", "int8"):
        runtime = runtime_for(load_model(path, size, "cpu", dtype))
        start = time.perf_counter()
        batches = encode_image_batches(runtime, sources, batch_size, Outcome(), Reporter())
        states = [state for batch in batches for _, state in batch]
        seconds = time.perf_counter() - start
        texts = runtime.encode_texts(TEXTS)
        pairs = [(t, i) for t in texts for i in states[:32]]
        embedded[dtype] = (itc(states), itc(texts), runtime.match_scores(pairs, batch_size))
        result[f"{dtype}_images_per_s"] = round(count / seconds, 2)
        print(f"  {size} {dtype}: {count} images in {seconds:.1f} s", flush=True)
    (images, texts, scores), (images8, texts8, scores8) = embedded["float32"], embedded["int8"]
    overlaps = []
    for query, query8 in zip(texts, texts8):
        top = set((images @ query).topk(10).indices.tolist())
        top8 = set((images8 @ query8).topk(10).indices.tolist())
        overlaps.append(len(top & top8) / 10)
    image_cosines = torch.cosine_similarity(images, images8, dim=1)
    result |= {
        "ratio": round(result["int8_images_per_s"] / result["float32_images_per_s"], 2),
        "image_cosine_min": round(image_cosines.min().item(), 5),
        "image_cosine_mean": round(image_cosines.mean().item(), 5),
        "text_cosine_min": round(torch.cosine_similarity(texts, texts8, dim=1).min().item(), 5),
        "top10_overlap_mean": round(statistics.mean(overlaps), 3),
        "top10_overlap_min": round(min(overlaps), 3),
        "itm_logit_max_abs_delta": round(max(abs(a[0] - b[0]) for a, b in zip(scores, scores8)), 4),
        "itm_probability_max_abs_delta": round(max(abs(a[1] - b[1]) for a, b in zip(scores, scores8)), 4),
    }
    return result


def embed_command(size: str, count: int) -> dict:
    """Section 3: the whole `bt embed --kind image` command on ``count`` photos, float32 and int8 (graphs cached)."""
    folder = photo_folder(count)
    path = checkpoint(size, HEADS)
    times = {}
    with tempfile.TemporaryDirectory() as scratch:
        env = dict(os.environ, BT_DEVICE="cpu", BT_INT8_CACHE=str(Path(scratch) / "cache"))
        for dtype in ("int8", "float32", "int8"):  # the first int8 run builds the graphs: not timed
            out = Path(scratch) / f"{dtype}.npy"
            command = [sys.executable, "-m", "bridgetower_cli", "embed", "--kind", "image", str(folder), "-m",
                       str(path), "--dtype", dtype, "-q", "-o", str(out)]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
            times[dtype] = time.perf_counter() - start
    return {
        "size": size,
        "images": count,
        "float32_s": round(times["float32"], 1),
        "int8_s": round(times["int8"], 1),
        "ratio": round(times["float32"] / times["int8"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fidelity-images", type=int, default=1000)
    parser.add_argument("--json")
    args = parser.parse_args()
    print(machine())
    print(f"\n1. Image pass runtimes ({args.size}, batch {args.batch})", flush=True)
    candidates = runtimes(args.size, args.batch, args.repeats)
    base = candidates[0]["images_per_s"]
    header = ["runtime", "images/s", "vs torch fp32", "min cosine to fp32", "start-up s", "install MB"]
    rows = [[c["runtime"], c["images_per_s"], f"{c['images_per_s'] / base:.2f}x", c["cosine_min"], c["startup_s"],
             c["install_mb"]] for c in candidates]  # fmt: skip
    print(table(header, rows))
    print(f"\n2. Fidelity of --dtype int8 ({args.fidelity_images} photos)", flush=True)
    fidelities = [fidelity(size, args.fidelity_images, args.batch) for size in ("tiny", args.size)]
    keys = [k for k in fidelities[0] if k != "size"]
    print(table(["", *[f["size"] for f in fidelities]], [[k, *[f[k] for f in fidelities]] for k in keys]))
    print("\n3. bt embed --kind image, whole command", flush=True)
    command = embed_command(args.size, 64)
    print(table(list(command), [list(command.values())]))
    if args.json:
        results = {"machine": machine(), "runtimes": candidates, "fidelity": fidelities, "embed_command": command}
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
