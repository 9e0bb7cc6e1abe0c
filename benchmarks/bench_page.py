"""The search page's timings (issue 33), server-side, tiny checkpoint, side by side in one run:

    python benchmarks/bench_page.py [--phones 24] [--rows 100000] [--json results/page.json]

1. a cold grid: 24 thumbnails of 12-megapixel JPEGs fetched as a browser does (6 at a time) right after the index
   was built through /v1/index (which makes them), against the same with none made yet (made at first view);
2. explain on a 27-megapixel photo with its picture (/v1/explain, pictures): time and PNG size, against drawing the
   map at the photo's own size as before;
3. paging at ``--rows`` images (synthetic vectors written through the index API): the first page (the ranking, kept)
   against a later page (/v1/hits: a slice of it), median of 20.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from common import CACHE, SAMPLES, checkpoint, machine, photo_folder, table
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import served  # noqa: E402  (the tests' real server in a thread, configured as bt serve)

from bridgetower_cli.server import Settings, create_app  # noqa: E402
from bridgetower_cli.server.web import root_index  # noqa: E402


def phones(count: int) -> Path:
    """``count`` distinct 12-megapixel JPEGs (4000 x 3000), made once."""
    folder = CACHE / f"phones-12mp-{count}"
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for k, photo in enumerate(sorted(photo_folder(count).glob("*.jpg"))):
        Image.open(photo).convert("RGB").resize((4000, 3000)).save(folder / f"phone{k:03d}.jpg", quality=90)
    return folder


def grid_s(url: str, folder: Path) -> float:
    """24 thumbnails fetched 6 at a time (a browser's connections to one host), the whole grid's time."""
    paths = sorted(str(p) for p in folder.glob("*.jpg"))[:24]

    def fetch(path: str) -> None:
        answer = requests.get(f"{url}/v1/thumbnail", params={"path": path, "side": 256}, timeout=120)
        answer.raise_for_status()

    start = time.perf_counter()
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(fetch, paths))
    return time.perf_counter() - start


def cold_grid(model: Path, count: int) -> dict:
    folder = phones(count).resolve()
    indexes = Path(tempfile.mkdtemp(prefix="bt-bench-page-"))
    settings = Settings(models=[str(model)], device="cpu", allow_paths=[folder], index_dir=indexes)
    with served(create_app(settings)) as url:
        body = {"model": str(model), "sources": [str(folder)], "index": root_index(str(folder))}
        start = time.perf_counter()
        requests.post(url + "/v1/index", json=body, timeout=3600).raise_for_status()
        indexing = time.perf_counter() - start
        made = grid_s(url, folder)
        shutil.rmtree(indexes / "thumbnails")
        first_view = grid_s(url, folder)
    shutil.rmtree(indexes)
    return {"index_s": indexing, "grid_after_index_s": made, "grid_made_at_view_s": first_view}


def explain_27mp(model: Path) -> dict:
    from bridgetower_cli.pictures import explained_picture, model_view
    from bridgetower_cli.sources import ImageSource

    folder = CACHE / "explain-27mp"
    folder.mkdir(parents=True, exist_ok=True)
    photo = folder / "coffee-27mp.jpg"
    if not photo.exists():
        Image.open(SAMPLES / "coffee.jpg").convert("RGB").resize((6000, 4500)).save(photo, quality=90)
    settings = Settings(models=[str(model)], device="cpu", allow_paths=[folder], index_dir=folder / "indexes")
    body = {"model": str(model), "images": [{"name": str(photo), "path": str(photo)}], "texts": ["a cup of coffee"],
            "pictures": True, "words": True}  # fmt: skip
    with served(create_app(settings)) as url:
        requests.post(url + "/v1/explain", json=body, timeout=600).raise_for_status()  # (the model loaded)
        times, answer = [], None
        for _ in range(3):
            start = time.perf_counter()
            answer = requests.post(url + "/v1/explain", json=body, timeout=600)
            times.append(time.perf_counter() - start)
    record = answer.json()["records"][0]
    png = len(base64.b64decode(record["picture"].split(",", 1)[1]))
    start = time.perf_counter()  # before: the map drawn at the photo's own size, then encoded
    from types import SimpleNamespace

    image = model_view(ImageSource(str(photo), path=str(photo)), 384)
    explained = explained_picture(image, SimpleNamespace(**{**record, "tokens": []}), 384)
    path = folder / "full.png"
    explained.save(path)
    before = time.perf_counter() - start
    return {"explain_s": statistics.median(times), "png_bytes": png, "full_size_picture_s": before,
            "full_size_png_bytes": path.stat().st_size}  # fmt: skip


def synthetic_index(model: Path, rows: int, folder: Path) -> tuple[Path, str]:
    """An index of ``rows`` unit vectors at the model's width, for a tree of empty files, written through the index
    API under the name the server gives the tree's root: (the root, the index's name)."""
    import json as _json

    import numpy as np
    from bench_index_scale import _stamp, tree

    from bridgetower_cli.index.files import FileState
    from bridgetower_cli.index.store import EmbeddingIndex
    from bridgetower_cli.model.hub import fingerprint

    root = tree(rows).resolve()
    dim = _json.loads((model / "config.json").read_text())["contrastive_hidden_size"]
    name = root_index(str(root))
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    rng = np.random.default_rng(0)
    with EmbeddingIndex.for_writing(folder / f"{name}.sqlite", fingerprint(model), dim, label="synthetic") as index:
        for start in range(0, len(paths), 10_000):
            chunk = paths[start : start + 10_000]
            vectors = rng.standard_normal((len(chunk), dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            index.store([(FileState(p, *_stamp(p)), f"h{p}", v) for p, v in zip(chunk, vectors)], [])
    return root, name


def paging(model: Path, rows: int) -> dict:
    indexes = Path(tempfile.mkdtemp(prefix="bt-bench-hits-"))
    root, name = synthetic_index(model, rows, indexes)
    settings = Settings(models=[str(model)], device="cpu", allow_paths=[root], index_dir=indexes)
    body = {"model": str(model), "query": "a cat on a couch", "sources": [str(root)], "index": name,
            "refresh": False, "top_k": 24, "rerank_k": 0, "keep": True}  # fmt: skip
    with served(create_app(settings)) as url:
        warm = requests.post(url + "/v1/retrieve", json=body, timeout=600)  # (model, page cache)
        assert warm.ok, warm.text
        firsts, laters = [], []
        for _ in range(5):
            start = time.perf_counter()
            answer = requests.post(url + "/v1/retrieve", json=body, timeout=600).json()
            firsts.append(time.perf_counter() - start)
        hits = answer["meta"]["hits"]
        for k in range(20):
            start = time.perf_counter()
            requests.get(f"{url}/v1/hits/{hits}", params={"offset": 24 * (k + 1), "limit": 24}, timeout=60)
            laters.append(time.perf_counter() - start)
    shutil.rmtree(indexes)
    return {"rows": rows, "first_page_s": statistics.median(firsts), "later_page_s": statistics.median(laters)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phones", type=int, default=24)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--json")
    args = parser.parse_args()
    print(machine())
    model = checkpoint("tiny", ("itm", "mlm", "itc"))
    grid, explained, pages = cold_grid(model, args.phones), explain_27mp(model), paging(model, args.rows)
    print(f"\na cold grid of 24 thumbnails of 12 MP photos, fetched 6 at a time ({args.phones} photos indexed in "
          f"{grid['index_s']:.1f} s, thumbnails included)")  # fmt: skip
    print(table(["made while indexing", "made at first view", "ratio"],
                [[f"{grid['grid_after_index_s']:.2f} s", f"{grid['grid_made_at_view_s']:.2f} s",
                  f"{grid['grid_made_at_view_s'] / grid['grid_after_index_s']:.1f}x"]]))  # fmt: skip
    print("\nexplain on a 27 MP photo (6000 x 4500), with its picture and a map per word")
    print(table(["at display size (<= 1280 px)", "PNG", "the map at the photo's size (before)", "its PNG"],
                [[f"{explained['explain_s']:.2f} s", f"{explained['png_bytes'] / 1e6:.2f} MB",
                  f"{explained['full_size_picture_s']:.1f} s (drawing alone)",
                  f"{explained['full_size_png_bytes'] / 1e6:.1f} MB"]]))  # fmt: skip
    print(f"\npaging at {pages['rows']:,} images (no rerank: the synthetic rows have no pixels)")
    print(table(["first page (ranks, keeps)", "a later page (/v1/hits)", "ratio"],
                [[f"{pages['first_page_s'] * 1000:.0f} ms", f"{pages['later_page_s'] * 1000:.1f} ms",
                  f"{pages['first_page_s'] / pages['later_page_s']:.0f}x"]]))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"grid": grid, "explain": explained, "paging": pages}, indent=2))


if __name__ == "__main__":
    main()
