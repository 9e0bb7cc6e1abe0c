"""`bt serve` and `--server`: every command through the server equals the in-process run; bad requests get the
right 4xx and the server keeps answering; loopback by default, keys, allowed paths, micro-batching, SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import requests
from conftest import DEVICE, SAMPLES
from reference import contrastive, itm_logits, rgb

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from helpers import DOT, served

from bridgetower_cli.server import Settings, create_app  # noqa: E402
from bridgetower_cli.server.workers import Job, ModelWorker  # noqa: E402

LOCAL = "http://127.0.0.1"

TEXTS = ["two cats on a couch", "a rocket launch at night"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory, samples) -> Path:
    """The folder the server may read (--allow-path): a copy of the samples and room for indexes."""
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(samples, root / "photos", ignore=shutil.ignore_patterns("*.md", "*.json"))
    return root


@pytest.fixture(scope="module")
def live(full_checkpoint, shared):
    """A real server on 127.0.0.1 (uvicorn in a thread), the full checkpoint loaded: (URL, app)."""
    settings = Settings(
        models=[str(full_checkpoint)],
        device=DEVICE,
        dtype="float32",
        allow_paths=[shared.resolve()],
        index_dir=shared / "server-indexes",
    )
    app = create_app(settings)
    with served(app, ready_s=60) as url:
        yield url, app


def numbers_close(a, b) -> bool:
    """The same JSON, strings and order equal, numbers within 1e-5."""
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= 1e-5
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(numbers_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(numbers_close(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize(
    "command",
    [
        ["score", "{photos}", *TEXTS],
        ["score", "photos/cat.jpg", "-t", "a cat", "-k", "1"],
        ["fill-mask", "{photos}/cat.jpg", "photos/rocket.jpg", "a <mask> on a <mask>", "-k", "3"],
        ["embed", "photos", "--kind", "image"],
        ["embed", "-t", "a cat", "-t", "a dog"],
        ["embed", "{photos}/coffee.jpg", "-t", "a cup", "--kind", "cross"],
        ["retrieve", "two cats", "photos", "--index", "{index}", "-r", "3"],
        ["retrieve", "two cats", "{photos}", "--index", "{index}", "-r", "2", "-f", "csv"],
        ["retrieve", "--image", "{photos}/cat.jpg", "-t", "a cat", "-t", "a rocket", "-t", "a cup"],
    ],
)
def test_every_command_through_the_server_prints_what_it_prints_in_process(
    bt, live, full_checkpoint, shared, tmp_path, command, monkeypatch
):
    """Byte for byte: the same records, names as typed (relative paths too), numbers, order and format."""
    url, _ = live
    monkeypatch.chdir(shared)
    name = f"ix-{len(command)}-{command[-1]}"
    local = [a.format(photos=shared / "photos", index=tmp_path / f"{name}.sqlite") for a in command]
    remote = [a.format(photos=shared / "photos", index=name) for a in command]
    fmt = [] if "-f" in command else ["-f", "json"]
    local = bt(*local, "-m", full_checkpoint, *fmt)
    remote = bt(*remote, "-m", full_checkpoint, *fmt, "--server", url)
    assert local.code == remote.code == 0, remote.stderr
    assert remote.stdout == local.stdout


def test_skipped_files_and_exit_status_are_the_same(bt, live, full_checkpoint, shared, tmp_path):
    url, _ = live
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(shared / "photos" / "cat.jpg", folder / "cat.jpg")
    (folder / "broken.jpg").write_text("not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    local = bt("score", folder, "a cat", "-m", full_checkpoint, "-f", "json")
    remote = bt("score", folder, "a cat", "-m", full_checkpoint, "-f", "json", "--server", url)
    assert local.code == remote.code == 3
    assert numbers_close(local.json(), remote.json())
    for name in ("broken.jpg", "empty.png"):
        assert remote.stderr.count(name) == 1 and "2 input(s) skipped" in remote.stderr


@pytest.mark.slow
def test_the_client_imports_neither_torch_nor_transformers(live, full_checkpoint, samples):
    url, _ = live
    from helpers import CHECK_IMPORTS

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CHECK_IMPORTS,
            "score",
            samples / "cat.jpg",
            "a cat",
            "-m",
            full_checkpoint,
            "--server",
            url,
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["text"] == "a cat"
    assert result.stderr.rstrip().endswith("HEAVY=")


def data_url(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def test_openai_embeddings_shape(live, full_checkpoint, samples):
    url, _ = live
    texts = requests.post(f"{url}/v1/embeddings", json={"model": str(full_checkpoint), "input": TEXTS}).json()
    assert texts["object"] == "list" and [d["index"] for d in texts["data"]] == [0, 1]
    assert texts["usage"]["prompt_tokens"] > 0
    image = rgb(samples / "cat.jpg")
    for datum, text in zip(texts["data"], TEXTS):
        stock = contrastive(full_checkpoint, image, text).text_embeds[0]
        assert datum["object"] == "embedding" and max(abs(a - b) for a, b in zip(datum["embedding"], stock)) <= 1e-5
    body = {"model": str(full_checkpoint), "input": [data_url(samples / "cat.jpg")], "modality": "image"}
    (datum,) = requests.post(f"{url}/v1/embeddings", json=body).json()["data"]
    stock = contrastive(full_checkpoint, image, "a").image_embeds[0]
    assert max(abs(a - b) for a, b in zip(datum["embedding"], stock)) <= 1e-5


def test_cohere_rerank_shape(live, full_checkpoint, samples):
    url, _ = live
    images = [samples / "cat.jpg", samples / "rocket.jpg", samples / "coffee.jpg"]
    body = {"model": str(full_checkpoint), "query": TEXTS[0], "documents": [data_url(p) for p in images], "top_n": 2}
    results = requests.post(f"{url}/v1/rerank", json=body).json()["results"]
    expected = [itm_logits(full_checkpoint, rgb(p), TEXTS[0]).softmax(-1)[1].item() for p in images]
    assert [r["index"] for r in results] == sorted(range(3), key=lambda k: -expected[k])[:2]
    assert all(abs(r["relevance_score"] - expected[r["index"]]) <= 1e-5 for r in results)
    body = {"model": str(full_checkpoint), "query": data_url(samples / "cat.jpg"), "documents": TEXTS}
    results = requests.post(f"{url}/v1/rerank", json=body).json()["results"]
    expected = [itm_logits(full_checkpoint, rgb(samples / "cat.jpg"), t).softmax(-1)[1].item() for t in TEXTS]
    assert all(abs(r["relevance_score"] - expected[r["index"]]) <= 1e-5 for r in results)


def test_the_openapi_schema_documents_the_fields(live):
    url, _ = live
    schema = requests.get(f"{url}/openapi.json").json()
    assert {
        "/v1/score",
        "/v1/fill-mask",
        "/v1/embed",
        "/v1/retrieve",
        "/v1/models",
        "/v1/embeddings",
        "/v1/rerank",
    } <= set(schema["paths"])
    for name in ("ScoreIn", "FillMaskIn", "EmbedIn", "RetrieveIn", "EmbeddingsIn", "RerankIn", "ImageIn"):
        fields = schema["components"]["schemas"][name]["properties"]
        assert all(field.get("description") for field in fields.values()), name


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/v1/score", b"{not json", 422, "invalid request"),
        ("/v1/score", {"images": "cat.jpg", "texts": ["a"]}, 422, "invalid request: images"),
        ("/v1/score", {"images": [{"name": "x", "data": "%%%"}], "texts": ["a"]}, 422, "not valid base64"),
        ("/v1/embeddings", {"input": ["data:image/png;base64,AAAA"], "modality": "image"}, 422, "input[0]"),
        ("/v1/score", {"model": "/no/such/model", "images": [DOT], "texts": ["a"]}, 403, "is not served here"),
        ("/v1/retrieve", {"query": "a cat", "sources": ["/etc"]}, 403, "not under the server's --allow-path roots"),
    ],
)
def test_bad_requests_get_the_right_status_and_the_server_lives_on(live, full_checkpoint, path, body, status, message):
    url, _ = live
    if isinstance(body, dict) and "model" not in body:
        body = {"model": str(full_checkpoint), **body}
    sent = (
        requests.post(f"{url}{path}", data=body)
        if isinstance(body, bytes)
        else requests.post(f"{url}{path}", json=body)
    )
    assert sent.status_code == status and message in sent.json()["error"]
    assert "Traceback" not in sent.text
    assert requests.get(f"{url}/health").json()["status"] == "ok"


def test_body_cap_and_api_key(full_checkpoint):
    app = create_app(Settings(api_key="s3cret", max_body_bytes=10_000, device=DEVICE))
    with TestClient(app, base_url=LOCAL) as client:
        assert client.get("/health").status_code == 200  # health needs no key
        assert client.post("/v1/score", json={"images": [DOT], "texts": ["a"]}).status_code == 401
        wrong = client.post("/v1/score", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "missing or wrong API key"
        big = {"model": str(full_checkpoint), "images": [{"name": "x", "data": "A" * 20_000}], "texts": ["a"]}
        assert client.post("/v1/score", json=big, headers={"Authorization": "Bearer s3cret"}).status_code == 413

        def chunks():
            yield b'{"texts": ["'
            for _ in range(20):
                yield b"a" * 1000
            yield b'"]}'

        streamed = client.post("/v1/score", content=chunks(), headers={"Authorization": "Bearer s3cret"})
        assert streamed.status_code == 413


def test_binding_beyond_loopback_needs_a_key(bt):
    result = bt("serve", "--host", "0.0.0.0", "--port", "0")
    assert result.code == 1 and "needs an API key" in result.stderr


def test_a_path_outside_allow_path_is_refused(bt, live, full_checkpoint, samples):
    url, _ = live
    result = bt("retrieve", "a cat", samples, "-m", full_checkpoint, "--server", url)
    assert result.code == 1 and "not under the server's --allow-path roots" in result.stderr


def test_a_client_that_disconnects_mid_request_does_no_harm(live, full_checkpoint, samples):
    url, _ = live
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(
        {
            "model": str(full_checkpoint),
            "images": [{"name": "cat", "data": base64.b64encode((samples / "cat.jpg").read_bytes()).decode()}] * 8,
            "texts": TEXTS,
        }
    ).encode()
    for cut in (len(payload) // 2, len(payload)):  # mid-body, and after the body before the answer
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(
                b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                + payload[:cut]
            )
    time.sleep(0.5)
    assert requests.get(f"{url}/health").json()["status"] == "ok"
    again = requests.post(f"{url}/v1/score", json={"model": str(full_checkpoint), "images": [DOT], "texts": ["a"]})
    assert again.status_code == 200


def test_concurrent_pairs_are_fused_together(full_checkpoint):
    from bridgetower_cli.model.loading import load_model
    from bridgetower_cli.model.runtime import Runtime

    runtime = Runtime(load_model(full_checkpoint, "full", DEVICE, "float32"))
    worker = ModelWorker(runtime, batch_size=16, window_s=0.5)
    texts = runtime.encode_texts(TEXTS)
    pixels = runtime.pixel_values(rgb(SAMPLES / "cat.jpg"))
    (image,) = runtime.encode_images(pixels[None])
    hold, results = threading.Event(), {}
    worker.jobs.put(Job(hold.wait, (), Future()))  # keeps the worker busy while the requests queue up
    threads = [
        threading.Thread(target=lambda k=k: results.__setitem__(k, worker.match(None, [(t, image) for t in texts])))
        for k in range(3)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # all three wait behind the held call
    hold.set()
    for thread in threads:
        thread.join(timeout=60)
    worker.stop()
    assert worker.batches == [6]  # three requests' pairs in one fused group
    alone = runtime.match_scores([(t, image) for t in texts], 8)
    for k in range(3):
        assert all(abs(a[0] - b[0]) <= 1e-5 and abs(a[1] - b[1]) <= 1e-5 for a, b in zip(results[k], alone))


def test_keep_alive_unloads_an_idle_model(full_checkpoint):
    app = create_app(Settings(models=[str(full_checkpoint)], device=DEVICE, keep_alive_s=0.0))
    with TestClient(app, base_url=LOCAL) as client:
        body = {"model": str(full_checkpoint), "images": [DOT], "texts": ["a"]}
        assert client.post("/v1/score", json=body).status_code == 200
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [str(full_checkpoint)]
        time.sleep(0.01)
        assert app.state.pool.unload_idle() == [str(full_checkpoint)]
        assert client.get("/v1/models").json()["data"] == []
        assert client.post("/v1/score", json=body).status_code == 200  # loaded again on use


@pytest.mark.slow
def test_sigterm_during_an_index_refresh_leaves_the_index_consistent(full_checkpoint, samples, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(150):
        shutil.copy(samples / "cat.jpg", folder / f"img{k:04d}.jpg")
    index = tmp_path / "indexes" / "ix.sqlite"
    env = dict(os.environ, BT_DEVICE=DEVICE)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bridgetower_cli",
            "serve",
            "--port",
            "0",
            "-m",
            full_checkpoint,
            "--allow-path",
            tmp_path,
            "--index-dir",
            tmp_path / "indexes",
            "-b",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url = server.stdout.readline().strip()
    answer = {}

    def query():
        body = {"model": str(full_checkpoint), "query": "a cat", "sources": [str(folder)], "index": "ix"}
        try:
            answer["response"] = requests.post(f"{url}/v1/retrieve", json=body, timeout=300)
        except requests.RequestException as error:
            answer["error"] = error

    client = threading.Thread(target=query)
    client.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            with sqlite3.connect(index, timeout=5) as db:
                if db.execute("SELECT COUNT(*) FROM images").fetchone()[0] >= 10:
                    break
        except sqlite3.OperationalError:
            continue
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=120)
    client.join(timeout=120)
    assert server.returncode == 0 and "Traceback" not in server.stderr.read()
    assert "error" not in answer, answer  # the request in flight was finished, not cut
    assert answer["response"].status_code == 200
    with sqlite3.connect(index) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 150
