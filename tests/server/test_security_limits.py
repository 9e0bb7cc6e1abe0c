"""`bt serve` tried as an attacker would (issue 18), its limits: every input is bounded (texts and images per
request, a huge text, 16-bit pixels, image bombs), a full queue answers 503 while /health answers at once, work
stops when its client goes away or its deadline passes, and a SIGTERM ends the server past its graceful timeout.
Each test was written against the old server and seen to fail there."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import DEVICE

pytest.importorskip("fastapi")
import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from helpers import DOT

from bridgetower_cli.server import Settings, create_app  # noqa: E402

LOCAL = "http://127.0.0.1"  # a TestClient's requests arrive on loopback


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


# -- 4. bounded inputs --------------------------------------------------------------------------------------------


def test_texts_and_images_per_request_are_capped(full_checkpoint, samples):
    app = create_app(Settings(models=[str(full_checkpoint)], device=DEVICE, max_texts=3, max_images=2))
    image = {"name": "cat", "data": b64(samples / "cat.jpg")}
    with TestClient(app, base_url=LOCAL) as client:
        body = {"model": str(full_checkpoint), "images": [DOT], "texts": ["a", "b", "c", "d"]}
        answer = client.post("/v1/score", json=body)
        assert answer.status_code == 413 and "texts" in answer.json()["error"]
        body = {"model": str(full_checkpoint), "images": [image | {"name": str(k)} for k in range(3)], "texts": ["a"]}
        answer = client.post("/v1/score", json=body)
        assert answer.status_code == 413 and "images" in answer.json()["error"]


def test_a_huge_text_is_cut_before_the_tokenizer_and_tokenized_off_the_model_thread(full_checkpoint, monkeypatch):
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    seen = []
    original = PreTrainedTokenizerBase.__call__

    def spy(self, text=None, *args, **kwargs):
        texts = [text] if isinstance(text, str) else list(text or [])
        seen.append((threading.current_thread().name, max(map(len, texts), default=0)))
        return original(self, text, *args, **kwargs)

    app = create_app(Settings(models=[str(full_checkpoint)], device=DEVICE))
    with TestClient(app, base_url=LOCAL) as client:
        monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", spy)
        body = {"model": str(full_checkpoint), "images": [DOT], "texts": ["a cat " * 2_000_000]}
        answer = client.post("/v1/score", json=body)
        monkeypatch.undo()
        assert answer.status_code == 200
        limit = app.state.pool.models[str(full_checkpoint)].runtime.text_char_limit
    assert seen and all(thread != "bt-model" for thread, _ in seen)
    assert max(length for _, length in seen) <= limit < 100_000


def test_16_bit_images_are_converted_without_a_float64_copy(monkeypatch):
    import numpy as np
    from PIL import Image

    from bridgetower_cli.images import to_rgb

    values = (np.arange(97 * 100) * 677 % 65536).astype(np.uint16).reshape(97, 100)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    expected = np.clip(values.astype(np.float64) * (255.0 / 65535.0) + 0.5, 0, 255).astype(np.uint8)
    real_asarray = np.asarray

    def no_float64(a, dtype=None, **kwargs):
        assert dtype not in (np.float64, float), "a float64 copy of the image"
        return real_asarray(a, dtype=dtype, **kwargs)

    monkeypatch.setattr(np, "asarray", no_float64)
    rgb = to_rgb(image)
    monkeypatch.undo()
    assert np.array_equal(np.asarray(rgb)[..., 0], expected)


# -- 5. backpressure and liveness ----------------------------------------------------------------------------------


def held(app, model: str):
    """Keep a model's worker busy until the event is set (the work queued behind it waits)."""
    from concurrent.futures import Future

    from bridgetower_cli.server.workers import Job

    hold = threading.Event()
    worker = app.state.pool.models[model].worker
    worker.jobs.put(Job(hold.wait, (), Future()))
    return hold


def test_a_full_queue_answers_503_and_health_still_answers_at_once(full_checkpoint):
    model = str(full_checkpoint)
    app = create_app(Settings(models=[model], device=DEVICE, max_waiting=2))
    body = {"model": model, "images": [DOT], "texts": ["a"]}
    with TestClient(app, base_url=LOCAL) as client:
        hold = held(app, model)
        answers = []
        waiting = [
            threading.Thread(target=lambda: answers.append(client.post("/v1/score", json=body))) for _ in range(2)
        ]
        for thread in waiting:
            thread.start()
        deadline = time.monotonic() + 30
        while app.state.pool.waiting.get(model, 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = client.post("/v1/score", json=body)
        assert busy.status_code == 503 and busy.headers["retry-after"] and "error" in busy.json()
        assert client.get("/health").json() == {"status": "ok"}
        hold.set()
        for thread in waiting:
            thread.join(timeout=60)
        assert [a.status_code for a in answers] == [200, 200]


def test_work_stops_when_the_client_goes_away(full_checkpoint, samples):
    model = str(full_checkpoint)
    app = create_app(Settings(models=[model], device=DEVICE, batch_size=1))
    image = {"name": "cat", "data": b64(samples / "cat.jpg")}
    body = {"model": model, "images": [image | {"name": f"cat{k}"} for k in range(20)], "texts": ["a", "b"]}
    with TestClient(app, base_url=LOCAL):
        pass  # the app's lifespan ran once: the model is loaded
    settings = app.state.settings
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    served_app = server.config.loaded_app
    while not hasattr(served_app, "state"):
        served_app = served_app.app
    hold = held(served_app, model)
    payload = json.dumps(body).encode()
    raw = socket.create_connection(listener.getsockname())
    raw.sendall(
        b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    pool = served_app.state.pool
    deadline = time.monotonic() + 30
    while pool.waiting.get(model, 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    raw.close()  # the client goes away while its first model call waits
    while pool.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    calls = pool.models[model].worker.calls
    hold.set()
    time.sleep(0.5)
    assert pool.cancelled == 1
    assert pool.models[model].worker.calls - calls <= 2  # at most the call in flight, never the 40 pairs
    server.should_exit = True
    thread.join(timeout=30)


# -- 4, 6: memory under image bombs, the deadline, and a SIGTERM that ends (a real `bt serve` process) ------------


def start_server(*args: str, env: dict | None = None):
    """``bt serve`` in a subprocess on a free port: (process, URL)."""
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "bridgetower_cli", "serve", "--port", "0", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, BT_DEVICE=DEVICE, **(env or {})),
    )
    url = process.stdout.readline().strip()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the URL comes first; /health answers once the models are loaded
        try:
            if requests.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.1)
    return process, url


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


def png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak RSS from /proc")
def test_small_image_bombs_cost_bounded_memory(full_checkpoint, samples):
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    process, url = start_server("-m", full_checkpoint, "--decode-budget", "10", "-b", "1")
    try:
        body = {"model": str(full_checkpoint), "texts": ["a"]}
        warm = {"name": "cat", "data": b64(samples / "cat.jpg")}
        assert requests.post(f"{url}/v1/score", json=body | {"images": [warm]}, timeout=60).status_code == 200
        before = peak_rss_mb(process.pid)
        one_bit = png(Image.new("1", (9400, 9400)))  # ~11 KB, 88 megapixels: over the budget, refused at its header
        sixteen = png(Image.new("I;16", (9400, 9400)))  # ~190 KB of 16-bit grey, 88 megapixels: refused alike
        deep = png(Image.new("I;16", (3000, 3000)))  # 9 megapixels of 16-bit grey: decoded, one at a time
        assert len(one_bit) < 40_000 and len(sixteen) < 400_000

        def send(data: str) -> int:
            image = {"name": "bomb", "data": data}
            return requests.post(f"{url}/v1/score", json=body | {"images": [image]}, timeout=300).status_code

        with ThreadPoolExecutor(24) as pool:
            codes = list(pool.map(send, [one_bit] * 8 + [sixteen] * 8 + [deep] * 8))
        assert set(codes) == {200}  # (bombs are skipped inputs: the records of the others, none here)
        growth = peak_rss_mb(process.pid) - before
        assert growth < 300, f"{growth:.0f} MB"
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_a_request_past_its_deadline_answers_504_and_stops(full_checkpoint):
    model = str(full_checkpoint)
    app = create_app(Settings(models=[model], device=DEVICE, request_timeout_s=0.3))
    with TestClient(app, base_url=LOCAL) as client:
        hold = held(app, model)
        answer = client.post("/v1/score", json={"model": model, "images": [DOT], "texts": ["a", "b"]})
        assert answer.status_code == 504 and "deadline" in answer.json()["error"]
        calls = app.state.pool.models[model].worker.calls
        hold.set()
        deadline = time.monotonic() + 30
        while app.state.pool.waiting[model] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.state.pool.models[model].worker.calls == calls  # (the held call counted): none of the request's


@pytest.mark.slow
def test_sigterm_past_the_graceful_timeout_cancels_the_rest_and_exits_0(full_checkpoint, samples):
    import signal

    process, url = start_server("-m", full_checkpoint, "--graceful-timeout", "1s", "-b", "1")
    image = {"name": "cat", "data": b64(samples / "cat.jpg")}
    body = {
        "model": str(full_checkpoint),
        "images": [image | {"name": f"cat{k}"} for k in range(20)],
        "texts": [f"caption number {k}" for k in range(1000)],  # 20,000 pairs, one per forward: minutes of work
    }
    answer = {}

    def send():
        answer["response"] = requests.post(f"{url}/v1/score", json=body, timeout=120)

    client = threading.Thread(target=send)
    client.start()
    time.sleep(2)  # the request is in (its bytes are sent long before; the work takes minutes)
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    client.join(timeout=30)
    assert code == 0 and time.monotonic() - start < 1 + 10
    assert answer["response"].status_code == 503 and "shutting down" in answer["response"].json()["error"]
    assert "Traceback" not in process.stderr.read()
