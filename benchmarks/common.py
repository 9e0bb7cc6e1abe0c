"""Shared benchmark helpers: a cached base-size checkpoint, timing, peak RSS, markdown tables."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

import torch

CACHE = Path(__file__).resolve().parent / ".cache"
SAMPLES = Path(__file__).resolve().parent.parent / "samples"
TEXTS = [
    "two cats on a couch",
    "a cup of coffee on a saucer",
    "an astronaut in a white suit",
    "a rocket launch at night",
    "a man holding a camera",
    "a football player scoring a goal",
    "a dog running across the grass",
    "a red car parked on a street",
    "a bird flying over the water",
    "a train crossing a snowy mountain",
    "a child sitting at a wooden table",
    "a boat on a lake under a cloudy sky",
    "a horse standing in a field",
    "a bowl of fruit on a kitchen counter",
    "a city skyline at sunset with tall buildings",
    "two people walking on the beach",
]
IMAGES = ["cat.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg", "cameraman-gray.png"]


def checkpoint(size: str = "base", heads: tuple[str, ...] = ("itm", "mlm")) -> Path:
    """Build the checkpoint once; later runs reuse it."""
    from bridgetower_cli.testing import build_checkpoint

    path = CACHE / f"{size}-{'-'.join(heads) or 'backbone'}"
    if not (path / "model.safetensors").is_file():
        print(f"building {path} (once) ...", flush=True)
        build_checkpoint(path, size, heads)
    return path


def timed(fn, repeats: int = 3, warmup: int = 1) -> tuple[float, object]:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs, and its last result."""
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def machine() -> str:
    cpu = f"{platform.machine()}, {torch.get_num_threads()} torch threads"
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{platform.platform()} ({cpu}{gpu}); torch {torch.__version__}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def photo_folder(count: int) -> Path:
    """``count`` distinct JPEG photos (random crops and flips of the samples), made once and cached."""
    import random

    from PIL import Image, ImageOps

    folder = CACHE / f"photos-{count}"
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(count)
    originals = [Image.open(SAMPLES / name).convert("RGB") for name in IMAGES]
    for k in range(count):
        image = originals[k % len(originals)]
        w, h = image.size
        scale = rng.uniform(0.6, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = image.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        crop.save(folder / f"photo{k:05d}.jpg", quality=90)
    return folder
