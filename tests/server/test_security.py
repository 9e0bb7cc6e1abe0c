"""`bt serve` tried as an attacker would (issue 18): nothing outside the roots is read, nothing the server did not
create is destroyed, only allowed models load, every input is bounded, errors are typed 4xx, the key guards
everything but a minimal /health. Each test was written against the old server and seen to fail there."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
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

from bridgetower_cli.server import Settings, create_app  # noqa: E402

LOCAL = "http://127.0.0.1"  # a TestClient's requests arrive on loopback


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def tree(tmp_path_factory, samples) -> dict[str, Path]:
    """A served root with photos, a text file and a bt index; outside it, a secret folder and photo, reachable
    from inside the root only through symlinks (a folder link, a file link)."""
    base = tmp_path_factory.mktemp("attack")
    root, outside = base / "root", base / "outside"
    (root / "photos").mkdir(parents=True)
    outside.mkdir()
    for name in ("cat.jpg", "coffee.jpg"):
        shutil.copy(samples / name, root / "photos" / name)
    shutil.copy(samples / "rocket.jpg", outside / "secret.jpg")
    (root / "notes.txt").write_text("my notes\n")
    (root / "photos" / "k").symlink_to(outside, target_is_directory=True)  # a folder link out of the root
    (root / "photos" / "linked.jpg").symlink_to(outside / "secret.jpg")  # a file link out of the root
    return {"base": base, "root": root, "outside": outside}


@pytest.fixture(scope="module")
def served(full_checkpoint, tree):
    """A real server on 127.0.0.1 (uvicorn in a thread) over the attack tree: (URL, app)."""
    settings = Settings(
        models=[str(full_checkpoint)],
        device=DEVICE,
        dtype="float32",
        allow_paths=[tree["root"].resolve()],
        index_dir=tree["base"] / "indexes",
    )
    app = create_app(settings)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", app
    server.should_exit = True
    thread.join(timeout=30)


def retrieve(url: str, model: Path, **fields) -> requests.Response:
    return requests.post(f"{url}/v1/retrieve", json={"model": str(model), "query": "a cat", **fields}, timeout=120)


# -- 1. nothing destroyed ---------------------------------------------------------------------------------------


def test_rebuild_cannot_unlink_a_photo_or_a_text_file(served, full_checkpoint, tree):
    url, _ = served
    photo, notes = tree["root"] / "photos" / "cat.jpg", tree["root"] / "notes.txt"
    before = photo.read_bytes(), notes.read_bytes()
    for victim in (photo, notes):
        answer = retrieve(url, full_checkpoint, sources=[str(tree["root"] / "photos")], index=str(victim), rebuild=True)
        assert answer.status_code == 422 and "plain name" in answer.json()["error"]
    assert (photo.read_bytes(), notes.read_bytes()) == before


def test_an_index_name_with_glob_characters_touches_no_other_index(served, full_checkpoint, tree):
    url, _ = served
    sources = [str(tree["root"] / "photos")]
    assert retrieve(url, full_checkpoint, sources=sources, index="one", rerank_k=0).status_code == 200
    vectors = sorted((tree["base"] / "indexes").glob("one.sqlite.vectors-*"))
    assert vectors
    for name in ("*", "o*", "[o]ne", "../one", ".hidden", "a/b", "one two"):
        answer = retrieve(url, full_checkpoint, sources=sources, index=name, rebuild=True, rerank_k=0)
        assert answer.status_code == 422, name
    # a name that spells another index's vector file is a distinct index of its own, and harms none
    lookalike = retrieve(url, full_checkpoint, sources=sources, index="one.sqlite.vectors-0", rebuild=True, rerank_k=0)
    assert lookalike.status_code == 200
    assert retrieve(url, full_checkpoint, sources=sources, index="one", rerank_k=0).status_code == 200
    assert all(v.exists() for v in vectors) and (tree["base"] / "indexes" / "one.sqlite").exists()


def test_rebuild_needs_an_index_name(served, full_checkpoint, tree):
    url, _ = served
    answer = retrieve(url, full_checkpoint, sources=[str(tree["root"] / "photos")], rebuild=True, rerank_k=0)
    assert answer.status_code == 422 and "index" in answer.json()["error"]


@pytest.mark.parametrize("content", [b"my notes\n", b"SQLite format 3\x00" + b"\x00" * 200])
def test_the_cli_refuses_a_file_that_is_not_a_bt_index(bt, full_checkpoint, samples, tmp_path, content):
    victim = tmp_path / "victim.sqlite"
    victim.write_bytes(content)
    for extra in ([], ["--rebuild"]):
        result = bt("index", samples / "cat.jpg", "--index", victim, "-m", full_checkpoint, *extra)
        assert result.code == 1 and "not a bt index" in result.stderr, result.stderr
    assert victim.read_bytes() == content


# -- 2. nothing read outside the roots ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, inside",
    [("photos/[k]/*.jpg", []), ("photos/*/*.jpg", []), ("photos/**/*.jpg", ["cat.jpg", "coffee.jpg"])],
)
def test_globs_never_reach_outside_the_roots(served, full_checkpoint, tree, pattern, inside):
    url, _ = served
    answer = retrieve(url, full_checkpoint, sources=[str(tree["root"] / pattern)], index="globs", rerank_k=0)
    if not inside:  # the only matches lie through a folder link out of the root: none
        assert answer.status_code == 422 and "no image files in" in answer.json()["error"]
        return
    assert answer.status_code == 200
    assert sorted(Path(r["image"]).name for r in answer.json()["records"]) == inside


def test_a_walk_does_not_follow_a_file_link_out_of_the_root(served, full_checkpoint, tree):
    url, _ = served
    answer = retrieve(url, full_checkpoint, sources=[str(tree["root"] / "photos")], index="walk", rerank_k=0)
    assert answer.status_code == 200
    assert sorted(Path(r["image"]).name for r in answer.json()["records"]) == ["cat.jpg", "coffee.jpg"]


def test_a_link_out_of_the_root_and_a_missing_path_get_the_same_answer(served, full_checkpoint, tree):
    url, _ = served
    answers = [
        retrieve(url, full_checkpoint, sources=[str(path)], index="links", rerank_k=0)
        for path in (tree["root"] / "photos" / "linked.jpg", tree["root"] / "photos" / "k", tree["outside"], "/nope/x")
    ]
    assert {a.status_code for a in answers} == {403}
    assert len({a.json()["error"].split(" is ")[-1] for a in answers}) == 1


# -- 3. models by allow-list --------------------------------------------------------------------------------------


def test_only_allowed_models_load(served, full_checkpoint, checkpoints, tmp_path):
    url, app = served
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "clip", "secret_value": "xyzzy"}')
    answers = {
        name: requests.post(f"{url}/v1/score", json={"model": name, "images": [], "texts": ["a"]}, timeout=60)
        for name in (str(checkpoints["itm_mlm"]), str(foreign), "/no/such/dir", "someone/else")
    }
    assert {a.status_code for a in answers.values()} == {403}
    assert len({a.json()["error"].replace(name, "MODEL") for name, a in answers.items()}) == 1
    assert all("xyzzy" not in a.text and "clip" not in a.text for a in answers.values())
    assert str(full_checkpoint) in answers["/no/such/dir"].json()["hint"]


def test_spellings_of_one_model_share_one_copy(served, full_checkpoint):
    url, app = served
    for spelling in (str(full_checkpoint), f"{full_checkpoint}/", f"{full_checkpoint}/../{full_checkpoint.name}"):
        answer = requests.post(f"{url}/v1/score", json={"model": spelling, "images": [], "texts": ["a"]}, timeout=60)
        assert answer.status_code == 200, answer.text
    assert len(app.state.pool.models) == 1


def test_least_recently_used_models_are_unloaded_past_max_models(checkpoints):
    paths = [str(checkpoints[name]) for name in ("full", "itm_mlm", "itc")]
    app = create_app(Settings(models=paths, device=DEVICE, max_models=2, no_pull=True))
    with TestClient(app, base_url=LOCAL) as client:
        for path in (paths[0], paths[1], paths[0], paths[2]):
            head = "itc" if path == paths[2] else "itm"
            route, body = (
                ("/v1/embed", {"kind": "text", "texts": ["a"]})
                if head == "itc"
                else ("/v1/score", {"images": [], "texts": ["a"]})
            )
            assert client.post(route, json={"model": path, **body}).status_code == 200
        assert sorted(app.state.pool.models) == sorted([paths[0], paths[2]])


# -- 4. bounded inputs --------------------------------------------------------------------------------------------


def test_texts_and_images_per_request_are_capped(full_checkpoint, samples):
    app = create_app(Settings(models=[str(full_checkpoint)], device=DEVICE, max_texts=3, max_images=2))
    image = {"name": "cat", "data": b64(samples / "cat.jpg")}
    with TestClient(app, base_url=LOCAL) as client:
        body = {"model": str(full_checkpoint), "images": [], "texts": ["a", "b", "c", "d"]}
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
        body = {"model": str(full_checkpoint), "images": [], "texts": ["a cat " * 2_000_000]}
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
    body = {"model": model, "images": [], "texts": ["a"]}
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
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
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


# -- 7. auth inside the app ------------------------------------------------------------------------------------------


def test_without_a_key_the_app_serves_loopback_only(full_checkpoint):
    app = create_app(Settings(device=DEVICE))
    with TestClient(app, base_url="http://10.1.2.3") as client:  # a connection that arrived on a public address
        answer = client.post("/v1/score", json={"model": str(full_checkpoint), "images": [], "texts": ["a"]})
        assert answer.status_code == 403 and "API key" in answer.json()["error"]


def test_the_app_refuses_to_start_on_a_public_bind_without_a_key():
    app = create_app(Settings(device=DEVICE, host="0.0.0.0"))
    with pytest.raises(Exception, match="API key"), TestClient(app, base_url=LOCAL):
        pass


def test_with_a_key_only_a_minimal_health_is_open(full_checkpoint):
    app = create_app(Settings(models=[str(full_checkpoint)], device=DEVICE, api_key="s3cret"))
    with TestClient(app, base_url=LOCAL) as client:
        assert client.get("/health").json() == {"status": "ok"}
        for path in ("/docs", "/openapi.json", "/v1/models", "/redoc"):
            assert client.get(path).status_code in (401, 404), path
        keyed = client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"})
        assert keyed.status_code == 200 and "/v1/score" in keyed.json()["paths"]


# -- 8. typed errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/v1/retrieve", {"query": "a", "sources": ["/tmp/a\u0000b"], "index": "x"}, 422, "NUL"),
        ("/v1/score", {"images": [], "texts": ["a \ud800 b"]}, 422, "not valid Unicode"),
        ("/v1/retrieve", {"image": {"name": "c", "data": "AAAA"}, "texts": []}, 422, "texts"),
        (
            "/v1/score",
            {"images": [{"name": "c", "data": "AAAA"}, {"name": "c", "data": "AAAA"}], "texts": ["a"]},
            422,
            "twice",
        ),
    ],
)
def test_bad_input_is_a_typed_4xx_never_a_500(full_checkpoint, tmp_path, path, body, status, message):
    app = create_app(Settings(models=[str(full_checkpoint)], device=DEVICE, allow_paths=[tmp_path]))
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as client:
        raw = json.dumps({"model": str(full_checkpoint), **body})  # (lone surrogates as JSON escapes)
        answer = client.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert answer.status_code == status and message in answer.json()["error"], answer.text


def test_unknown_routes_and_methods_answer_in_bt_shape():
    app = create_app(Settings(device=DEVICE))
    with TestClient(app, base_url=LOCAL) as client:
        for answer in (client.get("/v1/nothing"), client.get("/v1/score")):
            assert answer.status_code in (404, 405) and set(answer.json()) >= {"error"}


# -- 9. the client -------------------------------------------------------------------------------------------------


def fake_server(handler) -> tuple[str, threading.Thread]:
    import http.server

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{httpd.server_address[1]}", httpd


def test_the_client_refuses_an_answer_that_is_not_bt_json(bt, samples):
    import http.server

    class Html(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b"<html>a captive portal</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    url, httpd = fake_server(Html)
    result = bt("score", samples / "cat.jpg", "a cat", "--server", url, "-f", "json")
    httpd.shutdown()
    assert result.code == 1 and result.stdout == "" and "not a bt server" in result.stderr


def test_the_client_gives_up_on_a_server_that_never_answers(bt, samples):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does), never answers
    start = time.monotonic()
    result = bt(
        "score",
        samples / "cat.jpg",
        "a cat",
        "--server",
        f"http://127.0.0.1:{silent.getsockname()[1]}",
        env={"BT_TIMEOUT": "1"},
    )
    silent.close()
    assert result.code == 1 and "no answer within 1" in result.stderr
    assert time.monotonic() - start < 30


def test_tls_and_dns_errors_are_named(bt, samples):
    url, httpd = fake_server(__import__("http.server").server.BaseHTTPRequestHandler)
    tls = bt(
        "score", samples / "cat.jpg", "a cat", "--server", url.replace("http://", "https://"), env={"BT_TIMEOUT": "5"}
    )
    httpd.shutdown()
    assert tls.code == 1 and "TLS" in tls.stderr
    dns = bt("score", samples / "cat.jpg", "a cat", "--server", "http://bt-no-such-host.invalid:8765")
    assert dns.code == 1 and "cannot resolve" in dns.stderr


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
        answer = client.post("/v1/score", json={"model": model, "images": [], "texts": ["a", "b"]})
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


def test_with_a_server_the_index_is_a_name(bt, samples):
    result = bt("retrieve", "a cat", samples, "--index", "/tmp/x.sqlite", "--server", "http://127.0.0.1:9")
    assert result.code == 1 and "plain name" in result.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_the_client_speaks_https(bt, full_checkpoint, samples, tmp_path):
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    app = create_app(Settings(models=[str(full_checkpoint)], device=DEVICE))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", ssl_certfile=str(cert), ssl_keyfile=str(key))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"https://127.0.0.1:{listener.getsockname()[1]}"
    args = ("score", samples / "cat.jpg", "a cat", "-m", full_checkpoint, "--server", url, "-f", "json")
    untrusted = bt(*args)
    assert untrusted.code == 1 and "TLS" in untrusted.stderr  # a certificate nobody vouches for
    trusted = bt(*args, env={"SSL_CERT_FILE": str(cert)})
    server.should_exit = True
    thread.join(timeout=30)
    assert trusted.code == 0, trusted.stderr
    assert trusted.json()[0]["text"] == "a cat"
