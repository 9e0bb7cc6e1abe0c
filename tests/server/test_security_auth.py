"""`bt serve` tried as an attacker would (issue 18), who may talk to it and what they hear: the key guards
everything but a minimal /health (without one, loopback only), errors are typed 4xx in bt's shape, and the client
takes answers only from a bt server, named when it cannot reach one, over TLS it verifies. Each test was written
against the old server and seen to fail there."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import pytest
from conftest import DEVICE

pytest.importorskip("fastapi")
import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from helpers import DOT

from bridgetower_cli.server import Settings, create_app  # noqa: E402

LOCAL = "http://127.0.0.1"  # a TestClient's requests arrive on loopback


# -- 7. auth inside the app ------------------------------------------------------------------------------------------


def test_without_a_key_the_app_serves_loopback_only(full_checkpoint):
    app = create_app(Settings(device=DEVICE))
    with TestClient(app, base_url="http://10.1.2.3") as client:  # a connection that arrived on a public address
        answer = client.post("/v1/score", json={"model": str(full_checkpoint), "images": [DOT], "texts": ["a"]})
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
        ("/v1/score", {"images": [DOT], "texts": ["a \ud800 b"]}, 422, "not valid Unicode"),
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
