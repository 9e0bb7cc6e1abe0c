"""Every operation beside every other on one server (issue 29): model work, Grad-CAM included, runs only on the
model's worker, so what a request answers does not depend on what runs beside it."""

from __future__ import annotations

import base64
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import DEVICE
from helpers import served

pytest.importorskip("fastapi")
from bridgetower_cli.server import Settings, create_app  # noqa: E402

pytestmark = pytest.mark.slow
IGNORED = {"seconds"}  # (how long a run took: never the same twice)


@pytest.fixture(scope="module")
def server(full_checkpoint, samples, tmp_path_factory):
    """A real server (uvicorn in a thread) over a copy of the samples: (URL, the photos' folder)."""
    root = tmp_path_factory.mktemp("concurrent")
    shutil.copytree(samples, root / "photos", ignore=shutil.ignore_patterns("*.md", "*.json"))
    for k, name in enumerate(("cat.jpg", "coffee.jpg")):  # an ImageFolder of two classes for eval/classification
        (root / "classes" / f"c{k}").mkdir(parents=True)
        shutil.copy(samples / name, root / "classes" / f"c{k}" / name)
    settings = Settings(models=[str(full_checkpoint)], device=DEVICE, dtype="float32", max_waiting=256,
                        allow_paths=[root.resolve()], index_dir=root / "indexes")  # fmt: skip
    with served(create_app(settings)) as url:
        yield url, root.resolve()


def image(path: Path) -> dict:
    return {"name": path.name, "data": base64.b64encode(path.read_bytes()).decode()}


def bodies(model: str, photos: Path, classes: Path, copy: int) -> list[tuple[str, dict]]:
    """One request of each operation (searches and refreshes on an index of their own, ``copy``)."""
    cat, rocket = image(photos / "cat.jpg"), image(photos / "rocket.jpg")
    by_path = [{"name": p.name, "path": str(p)} for p in (photos / "cat.jpg", photos / "rocket.jpg")]
    labelled = sorted(classes.rglob("*.jpg"))
    return [
        ("/v1/score", {"images": [cat, rocket], "texts": ["a cat", "a rocket launch"]}),
        ("/v1/fill-mask", {"images": [cat], "texts": ["a <mask> on a couch"], "top_k": 3}),
        ("/v1/embed", {"kind": "image", "images": [cat, rocket]}),
        ("/v1/embed", {"kind": "cross", "images": [rocket], "texts": ["a rocket"]}),
        ("/v1/retrieve", {"image": cat, "texts": ["a cat", "a rocket", "a cup"], "rerank_k": 2}),
        ("/v1/retrieve", {"query": "a cat", "sources": [str(photos)], "index": f"search{copy}", "rerank_k": 2}),
        ("/v1/index", {"sources": [str(photos)], "index": f"refresh{copy}"}),
        ("/v1/eval", {"images": by_path, "texts": ["a cat", "a rocket"], "text_image": [0, 1], "k_test": 2}),
        ("/v1/classify", {"images": [cat], "labels": ["cat", "rocket", "cup"], "templates": ["a photo of a {}."]}),
        ("/v1/eval/classification", {"images": [{"name": p.name, "path": str(p)} for p in labelled],
                                     "targets": [0, 1], "classes": ["cat", "cup"], "method": "itm"}),
        ("/v1/explain", {"images": [cat], "texts": ["a cat on a couch"]}),
    ]  # fmt: skip


def ask(url: str, model: str, route: str, body: dict) -> dict:
    answer = requests.post(url + route, json={"model": model, **body}, timeout=600)
    assert answer.status_code == 200, (route, answer.text)
    return answer.json()


def close(a, b) -> bool:
    """The same JSON, numbers within 1e-5 (run times aside)."""
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-5
    if isinstance(a, dict):
        keys = a.keys() - IGNORED
        return keys == b.keys() - IGNORED and all(close(a[k], b[k]) for k in keys)
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    return a == b


def test_every_operation_beside_every_other_answers_as_alone(server, full_checkpoint):
    url, root = server
    model = str(full_checkpoint)
    alone = [ask(url, model, route, body) for route, body in bodies(model, root / "photos", root / "classes", 0)]
    together = [body for copy in (1, 2) for body in bodies(model, root / "photos", root / "classes", copy)]
    with ThreadPoolExecutor(max_workers=len(together)) as pool:
        answers = list(pool.map(lambda item: ask(url, model, *item), together))
    for k, answer in enumerate(answers):
        expected = alone[k % len(alone)]
        if together[k][0] == "/v1/index":  # (a fresh index of its own each time: the same counts)
            assert answer["records"] == expected["records"], answer
        else:
            assert close(answer["records"], expected["records"]), together[k][0]
        assert answer["skipped"] == [] and answer["skipped"] == expected["skipped"]


def test_explain_beside_concurrent_scores_never_fails(server, full_checkpoint):
    """24 Grad-CAM requests among score requests: each map equals a lone request's (the attack of issue 29: the
    Grad-CAM hook on the shared module, run off the worker, answered 500 to 9 of 24)."""
    url, root = server
    model, photos = str(full_checkpoint), root / "photos"
    explain = {"images": [image(photos / "cat.jpg")], "texts": ["two cats on a couch", "a rocket"]}
    score = {
        "images": [image(photos / name) for name in ("rocket.jpg", "coffee.jpg")],
        "texts": ["a cat", "a cup of coffee"],
    }
    (alone,) = [ask(url, model, "/v1/explain", explain)]
    work = [("/v1/explain", explain)] * 24 + [("/v1/score", score)] * 16
    work = [work[k] for k in sorted(range(len(work)), key=lambda k: (k * 7) % len(work))]  # interleaved
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda item: (item[0], ask(url, model, *item)), work))
    explained = [answer for route, answer in answers if route == "/v1/explain"]
    assert len(explained) == 24
    for answer in explained:
        assert close(answer["records"], alone["records"])


def test_a_classify_body_of_many_labels_is_refused_by_its_cost(server, full_checkpoint):
    """200,000 labels (1.6 MB) make 1.4 million prompts with CLIP's templates: refused (413) from the counts,
    before a prompt is built, and the label check is linear (a quadratic one took minutes)."""
    url, root = server
    labels = [f"l{k}" for k in range(200_000)]
    body = {"model": str(full_checkpoint), "images": [image(root / "photos" / "cat.jpg")], "labels": labels}
    answer = requests.post(url + "/v1/classify", json=body, timeout=60)
    assert answer.status_code == 413 and "200000 texts, over the limit" in answer.json()["error"]


def test_explain_with_pictures_draws_each_map_over_its_photo(server, full_checkpoint):
    """The search page's explain: each record with its picture, a PNG data URL at the photo's size."""
    import io

    from PIL import Image

    url, root = server
    body = {"images": [image(root / "photos" / "rocket.jpg")], "texts": ["a rocket"], "pictures": True}
    (record,) = ask(url, str(full_checkpoint), "/v1/explain", body)["records"]
    header, _, data = record["picture"].partition(",")
    assert header == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(data))) as picture, Image.open(root / "photos" / "rocket.jpg") as photo:
        assert picture.format == "PNG" and picture.size == photo.size
