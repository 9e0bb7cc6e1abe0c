"""`bt serve` exposed for real (issue 31): each test is one attack, as a client without the key, a web page in a
browser or another local user would make it. Its docstring says what it tries and what it asserts; each was run
against the code before its fix and seen to succeed there."""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import DEVICE
from helpers import DOT, served

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from bridgetower_cli.errors import BtError  # noqa: E402
from bridgetower_cli.server import Settings, create_app  # noqa: E402

LOCAL = "http://127.0.0.1:8000"
DATA_ROUTES = [("GET", "/v1/library"), ("POST", "/v1/retrieve"), ("GET", "/v1/thumbnail?path=/x.jpg"),
               ("POST", "/v1/score"), ("GET", "/v1/models")]  # fmt: skip


@pytest.fixture
def keyless(tmp_path):
    """A keyless loopback server (the search page over one's photos), as a browser reaches it."""
    settings = Settings(index_dir=tmp_path / "indexes", no_pull=True)
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        yield client


@pytest.mark.parametrize("method, path", DATA_ROUTES)
def test_dns_rebinding_a_foreign_host_gets_no_data(keyless, method, path):
    """Tries: a page on rebind.attacker.example whose name now resolves to 127.0.0.1 asks the keyless server for
    data (the Host header names the attacker's domain). Asserts: 403 on every data route, before any work."""
    answer = keyless.request(method, path, headers={"Host": "rebind.attacker.example:8000"}, json={})
    assert answer.status_code == 403 and "Host" in answer.json()["error"], answer.text


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "localhost", "127.0.0.1"])
def test_loopback_names_are_served_without_a_key(keyless, host):
    """Asserts: the names a person types for their own machine, with or without a port, are served."""
    assert keyless.get("/v1/models", headers={"Host": host}).status_code == 200


def test_allowed_hosts_are_served(tmp_path):
    """Asserts: a name given with --allowed-host (a LAN name for one's own box behind a proxy) is served."""
    settings = Settings(index_dir=tmp_path / "indexes", no_pull=True, allowed_hosts=["photos.lan"])
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        assert client.get("/v1/models", headers={"Host": "photos.lan:8000"}).status_code == 200
        assert client.get("/v1/models", headers={"Host": "other.lan"}).status_code == 403


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:9999"])
def test_a_cross_origin_browser_post_is_refused(keyless, origin):
    """Tries: a page of another origin (another site, a sandboxed frame, another local port) POSTs to the server, as
    a form or fetch() may without reading the answer. Asserts: 403 before any work, whatever the route."""
    answer = keyless.post("/v1/score", headers={"Origin": origin}, json={})
    assert answer.status_code == 403 and "origin" in answer.json()["error"], answer.text


def test_the_page_itself_may_post(keyless):
    """Asserts: the server's own page (Origin = the server) posts as before (here: a body refused as invalid)."""
    answer = keyless.post("/v1/score", headers={"Origin": LOCAL}, json={})
    assert answer.status_code == 422, answer.text


@pytest.fixture
def modelled(tmp_path, full_checkpoint):
    """A keyless loopback server with the test checkpoint."""
    settings = Settings(models=[str(full_checkpoint)], device=DEVICE, index_dir=tmp_path / "indexes", no_pull=True)
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        yield client


def _peak_mib(call) -> float:
    """The peak of Python's allocations while ``call`` runs, in MiB (strings, lists, bytes: what a request builds)."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_prompts_are_counted_by_their_characters_before_they_are_built(modelled, full_checkpoint):
    """Tries: /v1/classify with 1,000 labels (within max_texts) and one 2 MB template: 1,000 prompts of 2 MB each
    would be built (2 GB). Asserts: 413 naming the prompts' characters, and the request peaks under 100 MiB."""
    body = {"model": str(full_checkpoint), "images": [DOT], "method": "itc",
            "labels": [f"label {k}" for k in range(1000)], "templates": ["x" * 2_000_000 + " {}"]}  # fmt: skip
    answers = []
    peak = _peak_mib(lambda: answers.append(modelled.post("/v1/classify", json=body)))
    assert answers[0].status_code == 413 and "characters of prompts" in answers[0].json()["error"], answers[0].text
    assert peak < 100, peak


def test_a_request_over_its_counts_is_refused_before_its_images_are_decoded(modelled, full_checkpoint, monkeypatch):
    """Tries: /v1/score with 300 images (max 256), each a valid base64 photo. Asserts: 413 before any image's
    base64 is decoded (decoding is work the count should have spared)."""
    from bridgetower_cli.server.dispatch import Dispatcher

    decoded = []
    real = Dispatcher.decode
    monkeypatch.setattr(Dispatcher, "decode", lambda self, data, what: decoded.append(what) or real(self, data, what))
    body = {
        "model": str(full_checkpoint),
        "texts": ["a dot"],
        "images": [{**DOT, "name": f"{k}.png"} for k in range(300)],
    }
    answer = modelled.post("/v1/score", json=body)
    assert answer.status_code == 413 and "300 images" in answer.json()["error"], answer.text
    assert decoded == []


# -- the client against servers that never end, flood or garble -----------------------------------------------------

FAKE_ANSWERS = {  # what a fake server sends after the headers of a 200 (ndjson) answer, or of an error
    "heartbeats": (200, lambda write: [write(b'{"event": "alive"}\n') or time.sleep(0.2) for _ in iter(int, 1)]),
    "trickle": (200, lambda write: [write(b"{") or time.sleep(0.3) for _ in iter(int, 1)]),
    "long line": (200, lambda write: [write(b"x" * 2**20) for _ in range(400)]),
    "huge error": (500, lambda write: [write(b"x" * 2**20) for _ in range(400)]),
    "malformed": (200, lambda write: write(b'{"event": "record", "record": {"bogus": 1}}\n{"event": "end"}\n')),
}
CLIENT = (  # bt's CLI, then its peak memory (VmHWM: this process's own, unlike ru_maxrss, which keeps the parent's
    # memory at fork across exec) on stderr
    "import atexit, re, sys\n"
    "atexit.register(lambda: print('PEAK_KIB=' + re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1], "
    "file=sys.stderr))\n"
    "from bridgetower_cli.cli import main\n"
    "main(sys.argv[1:])\n"
)


@contextlib.contextmanager
def fake_server(mode: str):
    status, send = FAKE_ANSWERS[mode]

    class Fake(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(status)
            self.send_header("content-type", "application/x-ndjson" if status == 200 else "application/json")
            self.send_header("connection", "close")
            self.end_headers()
            with contextlib.suppress(OSError):  # (the client went away)
                send(self.wfile.write)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode, said", [
    ("heartbeats", "no answer within 2 s"), ("trickle", "no answer within 2 s"),
    ("long line", "sent a line over 16 MiB"), ("huge error", "sent an answer over 16 MiB"),
    ("malformed", "sent a malformed record"),
])  # fmt: skip
def test_the_client_ends_within_its_bounds_whatever_a_server_sends(samples, mode, said):
    """Tries: a fake server that sends heartbeats forever, one byte every 0.3 s, a 400 MiB line, a 400 MiB error
    body, or a record that is not one. Asserts: the client ends in one line naming the server within its deadline
    (--timeout 2: under 20 s) and under 100 MiB of memory."""
    with fake_server(mode) as url:
        args = ["score", samples / "cat.jpg", "a cat", "--server", url, "--timeout", "2", "-f", "json"]
        start = time.monotonic()
        result = subprocess.run([sys.executable, "-c", CLIENT, *map(str, args)], capture_output=True, text=True,
                                timeout=60, env={**os.environ, "BT_API_KEY": ""})  # fmt: skip
        took = time.monotonic() - start
    lines, peak = result.stderr.splitlines()[:-1], int(result.stderr.rsplit("PEAK_KIB=", 1)[1]) / 1024
    assert result.returncode == 1 and len(lines) == 1 and said in lines[0], result.stderr
    assert took < 20 and peak < 100, (took, peak)


# -- connections held, bodies sent without a key ------------------------------------------------------------------


def _status_line(connection: socket.socket, timeout_s: float = 5.0) -> bytes:
    connection.settimeout(timeout_s)
    return connection.recv(4096).split(b"\r\n", 1)[0]


def test_connections_that_never_finish_their_headers_hold_nothing(tmp_path, monkeypatch):
    """Tries: 165 connections from one address that send half a request's headers and then nothing (slowloris; it
    filled uvicorn's connection limit: every request, /health included, got 503 for as long as they were held).
    Asserts: /health answers 200 within 1 s while they are held, and each is closed once the headers deadline
    passes (1 s here)."""
    from bridgetower_cli.server import connections

    monkeypatch.setattr(connections, "HEADERS_S", 1.0)
    app = create_app(Settings(index_dir=tmp_path / "indexes", no_pull=True))
    with served(app, ready_s=60) as url:
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        held = []
        for _ in range(165):
            slow = socket.create_connection(address)
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            held.append(slow)
        start = time.monotonic()
        with socket.create_connection(address) as probe:
            probe.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert _status_line(probe) == b"HTTP/1.1 200 OK" and time.monotonic() - start < 1.0
        for slow in held:
            slow.settimeout(10)
            with contextlib.suppress(ConnectionResetError):  # (closed by the server, a FIN or a reset: never answered)
                assert slow.recv(4096) == b""
            slow.close()


@pytest.mark.parametrize("path", ["/health", "/", "/static/page.js"])
def test_a_body_sent_to_a_page_is_never_read(tmp_path, path):
    """Tries: a client without the key POSTs 60 MiB to the paths anyone may reach (they were read whole before the
    405: six such bodies cost +355 MB). Asserts: 405 while the body is still unsent (it is never waited for)."""
    app = create_app(Settings(index_dir=tmp_path / "indexes", no_pull=True, api_key="s3cret"))
    with served(app, ready_s=60) as url, socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as client:
        client.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {60 * 2**20}\r\n\r\n".encode())
        client.sendall(b"x" * 1024)
        assert _status_line(client) == b"HTTP/1.1 405 Method Not Allowed"


# -- the files the server owns --------------------------------------------------------------------------------------

ATTACKER = 12345  # another local user's uid (the tests run as root, which may hand a folder to it)


def _planted(indexes: Path, tag: str, secret: Path) -> Path:
    """The attacker's folder where the server's index folder goes: the thumbnail the server will look for (``tag``:
    its ETag) is a link to ``secret``, and so is the index the test asks for."""
    (indexes / "thumbnails" / "256").mkdir(parents=True)
    (indexes / "thumbnails" / "256" / f"{tag}.jpg").symlink_to(secret)
    (indexes / "photos.sqlite").symlink_to(secret)
    for path in [indexes, *indexes.rglob("*")]:
        os.chown(path, ATTACKER, ATTACKER, follow_symlinks=False)
    return indexes


@pytest.fixture
def shared_tmp(tmp_path, samples):
    """A shared 1777 folder (as /tmp), a photo under the server's root, and a root-only secret."""
    if os.geteuid() != 0:
        pytest.skip("needs root to hand a folder to another user")
    shared, photos = tmp_path / "shared", tmp_path / "photos"
    shared.mkdir()
    shared.chmod(0o1777)
    photos.mkdir()
    shutil.copy(samples / "cat.jpg", photos / "cat.jpg")
    secret = tmp_path / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    return shared, photos, secret


def test_an_index_folder_another_user_made_first_is_refused_at_start(shared_tmp):
    """Tries: another user creates the server's --index-dir first, under a shared 1777 folder, with links where the
    server's files go. Asserts: the server refuses to start, naming the folder."""
    shared, photos, secret = shared_tmp
    indexes = _planted(shared / "indexes", "0" * 32, secret)
    with pytest.raises(BtError, match="is not its own"):
        create_app(Settings(index_dir=indexes, allow_paths=[photos], no_pull=True))


def test_the_index_folder_is_verified_at_every_use(shared_tmp, full_checkpoint):
    """Tries: the server starts with its own folder, which is then replaced by another user's (as a folder made
    while the server runs, or one handed over), with the next thumbnail and an index as links to a root-only file.
    Asserts: thumbnails and indexes are refused (500, naming the folder), the secret is neither read nor
    overwritten."""
    shared, photos, secret = shared_tmp
    indexes = shared / "indexes"
    settings = Settings(models=[str(full_checkpoint)], device=DEVICE, index_dir=indexes, allow_paths=[photos],
                        no_pull=True)  # fmt: skip
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        first = client.get("/v1/thumbnail", params={"path": str(photos / "cat.jpg")})
        assert first.status_code == 200
        shutil.rmtree(indexes)
        indexes.mkdir()
        _planted(indexes, first.headers["etag"].strip('"'), secret)
        thumbnail = client.get("/v1/thumbnail", params={"path": str(photos / "cat.jpg")})
        assert thumbnail.status_code == 500 and "is not its own" in thumbnail.json()["error"], thumbnail.text
        found = client.post("/v1/retrieve", json={"model": str(full_checkpoint), "query": "a cat", "index": "photos",
                                                  "sources": [str(photos)]})  # fmt: skip
        assert found.status_code == 500 and "is not its own" in found.json()["error"], found.text
    assert secret.read_text() == "root only"


def _sized_jpeg(side: int, progressive: bool) -> str:
    """A small JPEG whose header says ``side`` x ``side`` (its frame header patched): base64, as a client sends it."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "JPEG", progressive=progressive)
    data = bytearray(buffer.getvalue())
    frame = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[frame + 5 : frame + 9] = side.to_bytes(2, "big") * 2
    return base64.b64encode(bytes(data)).decode()


def test_a_progressive_jpeg_is_charged_its_coefficients(modelled, full_checkpoint):
    """Tries: a 2 MB progressive JPEG of 32768 x 32768 was charged 67 MP (its reduced-scale output) but libjpeg holds
    every DCT coefficient at full resolution while decoding it (+2.1 GB). Asserts: skipped as over the decode budget
    from its header, before any decoding (it was decoded); a baseline JPEG of that size is still charged its
    reduced output."""
    from bridgetower_cli.images import decoded_pixels

    body = {"model": str(full_checkpoint), "texts": ["a dot"]}
    answer = modelled.post("/v1/score", json={**body, "images": [{"name": "p.jpg", "data": _sized_jpeg(32768, True)}]})
    (skipped,) = answer.json()["skipped"]  # (one image of a batch: a named skip)
    assert answer.json()["records"] == [] and "over its decode budget" in skipped["reason"], answer.text
    baseline = base64.b64decode(_sized_jpeg(32768, False))
    assert decoded_pixels(baseline) == (32768 // 4) ** 2  # (read at a quarter scale, as before)


# -- smaller: an oracle for outside names, odd names ----------------------------------------------------------------


@pytest.fixture
def rooted(tmp_path, samples):
    """A server whose root holds cat.jpg, beside an outside folder."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    shutil.copy(samples / "cat.jpg", root / "cat.jpg")
    settings = Settings(index_dir=tmp_path / "indexes", allow_paths=[root], no_pull=True)
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        yield client, root, outside


def test_an_outside_path_is_refused_before_it_is_resolved_further(rooted):
    """Tries: outside/x/../../root/cat.jpg, with outside/x a folder and then a link two levels down: it answered 200
    or 403 as x was a link or not (an oracle for what is outside). Asserts: 403 both times, the same answer."""
    client, root, outside = rooted
    deep = outside / "a" / "b"
    deep.mkdir(parents=True)
    (outside / "x").mkdir()
    sneaky = f"{outside}/x/../../{root.name}/cat.jpg"
    as_folder = client.get("/v1/thumbnail", params={"path": sneaky})
    (outside / "x").rmdir()
    (outside / "x").symlink_to(deep)  # (now x/../.. is outside/a: the path leads nowhere inside)
    as_link = client.get("/v1/thumbnail", params={"path": sneaky})
    assert as_folder.status_code == as_link.status_code == 403 and as_folder.json() == as_link.json()


@pytest.mark.parametrize("name", ["missing.jpg", "x" * 5000 + ".jpg", "cafe\u0301.jpg"])
def test_a_thumbnail_of_a_missing_or_impossible_name_is_a_typed_error(rooted, name):
    """Tries: a thumbnail of a missing file, of a 5,000-character name, of an NFD-spelled name (each a 500).
    Asserts: 404 or 422 with a one-line error, never 500."""
    client, root, _ = rooted
    answer = client.get("/v1/thumbnail", params={"path": f"{root}/{name}"})
    assert answer.status_code in (404, 422) and answer.json()["error"], answer.text


def test_an_eval_past_max_pairs_is_refused_before_any_work(tmp_path, samples, full_checkpoint):
    """Tries: /v1/eval whose images x captions pass --max-pairs (it admitted 262,144 pairs over a limit of
    100,000). Asserts: 413 naming the pairs, before any image is read."""
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(samples / "cat.jpg", root / "cat.jpg")
    settings = Settings(models=[str(full_checkpoint)], device=DEVICE, index_dir=tmp_path / "indexes",
                        allow_paths=[root], no_pull=True, max_pairs=5)  # fmt: skip
    images = [{"name": f"{k}.jpg", "path": str(root / "cat.jpg")} for k in range(3)]
    body = {"model": str(full_checkpoint), "images": images, "texts": ["a", "b"], "text_image": [0, 1]}
    with TestClient(create_app(settings), base_url=LOCAL) as client:
        answer = client.post("/v1/eval", json=body)
    assert answer.status_code == 413 and "6 image-text pairs" in answer.json()["error"], answer.text
