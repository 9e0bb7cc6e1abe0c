"""A second round of attacks on `bt serve` (an independent review of the issue 18 work): each found a hole, each
test reproduces it, and each hole was closed at the depth it belonged to (one canonical path per client string,
one way to open a file, one matcher, one guard in front of the body)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DEVICE

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from helpers import DOT

from bridgetower_cli.errors import BtError, InputError  # noqa: E402
from bridgetower_cli.server import Settings, create_app  # noqa: E402

LOCAL = "http://127.0.0.1"


@pytest.fixture
def root(tmp_path, samples) -> dict[str, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "photos").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(samples / "cat.jpg", root / "photos" / "a.jpg")
    shutil.copy(samples / "rocket.jpg", outside / "secret.jpg")
    return {"root": root, "outside": outside, "indexes": tmp_path / "indexes"}


@pytest.fixture
def client(full_checkpoint, root):
    settings = Settings(
        models=[str(full_checkpoint)], device=DEVICE, allow_paths=[root["root"]], index_dir=root["indexes"]
    )
    app = create_app(settings)
    with TestClient(app, base_url=LOCAL) as client:
        yield client


def retrieve(client, model, **fields):
    return client.post("/v1/retrieve", json={"model": str(model), "query": "a cat", "rerank_k": 5, **fields})


def test_a_file_swapped_for_a_link_after_indexing_is_never_read(client, full_checkpoint, root):
    folder = root["root"] / "photos"
    assert retrieve(client, full_checkpoint, sources=[str(folder)], index="swap").status_code == 200
    (folder / "a.jpg").unlink()
    (folder / "a.jpg").symlink_to(root["outside"] / "secret.jpg")  # the indexed path now leads out of the root
    answer = retrieve(client, full_checkpoint, sources=[str(folder)], index="swap", refresh=False)
    skipped = answer.json()["skipped"]
    assert [s["reason"] for s in skipped] == ["is a link out of the served folders"]
    assert all(r.get("logit") is None for r in answer.json()["records"])  # no score of the outside photo


@pytest.mark.parametrize("source", ["~/x", "-", "photos", "./photos"])
def test_sources_must_be_absolute_paths(client, full_checkpoint, root, source):
    answer = retrieve(client, full_checkpoint, sources=[source], index="x")
    assert answer.status_code == 422 and "absolute" in answer.json()["error"]


def test_dot_dot_after_a_link_resolves_as_the_kernel_does(client, full_checkpoint, root):
    (root["root"] / "link").symlink_to(root["outside"], target_is_directory=True)
    answers = [
        retrieve(client, full_checkpoint, sources=[str(root["root"] / "link" / ".." / name)], index="x")
        for name in ("secret.jpg", "nope.jpg")
    ]
    assert [a.status_code for a in answers] == [403, 403]
    assert answers[0].json()["error"].split(" is ")[-1] == answers[1].json()["error"].split(" is ")[-1]


def test_a_glob_with_many_double_stars_is_matched_in_linear_time():
    from bridgetower_cli.walker import _matches

    def too_slow(*_):
        raise TimeoutError("the glob matcher is exponential")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(10)
    try:
        assert not _matches(["**"] * 40 + ["*.png"], ["deep"] * 30 + ["x.jpg"])
        assert _matches(["**", "a", "**", "*.jpg"], ["x", "a", "y", "z", "p.jpg"])
        assert _matches(["**"], ["any", "thing.jpg"]) and _matches(["*.jpg"], ["p.jpg"])
        assert not _matches(["*", "*.jpg"], ["p.jpg"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_fifo_named_like_a_photo_never_blocks_a_walk(bt, full_checkpoint, samples, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(samples / "cat.jpg", folder / "cat.jpg")
    os.mkfifo(folder / "pipe.jpg")  # nobody ever writes to it
    result = bt("score", folder, "a cat", "-m", full_checkpoint, "-f", "json")
    assert result.code == 3 and "pipe.jpg: not a regular file" in result.stderr
    assert [r["image"] for r in result.json()] == [str(folder / "cat.jpg")]


def test_a_thin_image_is_padded_on_a_small_canvas():
    from PIL import Image

    from bridgetower_cli.images import fit_aspect

    canvas, padded = fit_aspect(Image.new("RGB", (200_000, 1), "white"), 288)
    assert padded and canvas.width * canvas.height < 1_000_000


def test_formats_that_decode_while_opening_are_never_tried():
    from PIL import Image

    from bridgetower_cli.images import decode_image

    buffer = io.BytesIO()
    Image.new("RGBA", (64, 64)).save(buffer, "ICO")
    with pytest.raises(InputError, match="not an image file bt can read"):
        decode_image(buffer.getvalue())


def test_an_odd_image_mode_is_a_skip_not_a_500(client, full_checkpoint):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("LA", (32, 32)).save(buffer, "TIFF")
    image = {"name": "odd.tif", "data": base64.b64encode(buffer.getvalue()).decode()}
    answer = client.post("/v1/score", json={"model": str(full_checkpoint), "images": [image], "texts": ["a"]})
    assert answer.status_code == 200


def test_a_huge_target_word_costs_nothing(full_checkpoint, monkeypatch):
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    from bridgetower_cli.model.loading import load_model
    from bridgetower_cli.model.runtime import Runtime
    from bridgetower_cli.records import Reporter
    from bridgetower_cli.tasks.pairs import target_ids

    runtime = Runtime(load_model(full_checkpoint, "full", DEVICE, "float32"))
    lengths = []
    original = PreTrainedTokenizerBase.__call__

    def spy(self, text=None, *args, **kwargs):
        lengths.append(len(text))
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", spy)
    assert len(target_ids(runtime, ["cat" * 7_000_000], Reporter())) == 1
    assert max(lengths) <= runtime.longest_token + 2


def test_an_answer_larger_than_the_limits_is_refused_at_admission(full_checkpoint, samples):
    app = create_app(Settings(models=[str(full_checkpoint)], device=DEVICE, max_candidates=1000, max_pairs=10))
    image = {"name": "cat", "data": base64.b64encode((samples / "cat.jpg").read_bytes()).decode()}
    with TestClient(app, base_url=LOCAL) as client:
        texts = [" ".join(["<mask>"] * 50)] * 2
        body = {"model": str(full_checkpoint), "images": [image], "texts": texts, "top_k": 20}
        answer = client.post("/v1/fill-mask", json=body)
        assert answer.status_code == 413 and "candidates" in answer.json()["error"]
        body = {"model": str(full_checkpoint), "images": [image], "texts": [f"text {k}" for k in range(11)]}
        assert client.post("/v1/score", json=body).status_code == 413


def serve_in_thread(app):
    import uvicorn

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, listener.getsockname()


def test_who_may_ask_is_decided_before_the_body_is_read_and_a_slow_body_times_out():
    app = create_app(Settings(device=DEVICE, api_key="s3cret", body_timeout_s=0.5))
    server, thread, address = serve_in_thread(app)
    try:
        with socket.create_connection(address) as raw:  # 20 MB announced, not one byte of it sent, no key
            raw.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\n\r\n")
            raw.settimeout(10)
            assert raw.recv(100).startswith(b"HTTP/1.1 401")
        with socket.create_connection(address) as raw:  # with the key, a body that never finishes arriving
            raw.sendall(
                b"POST /v1/score HTTP/1.1\r\nHost: x\r\nAuthorization: bearer s3cret\r\nContent-Length: 1000\r\n\r\n{"
            )
            raw.settimeout(10)
            assert raw.recv(100).startswith(b"HTTP/1.1 408")
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_the_index_folder_must_be_private(tmp_path):
    folder = tmp_path / "shared-indexes"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(BtError, match="is not its own"):
        create_app(Settings(device=DEVICE, index_dir=folder))


def test_index_files_the_server_did_not_make_are_left_alone(client, full_checkpoint, root):
    indexes = root["indexes"]
    indexes.mkdir(mode=0o700, exist_ok=True)
    foreign = indexes / "photos.sqlite.vectors-7"
    foreign.write_bytes(b"someone else's data")
    (indexes / "notes.sqlite-wal").write_bytes(b"a journal without its database")
    victim = root["outside"] / "victim.txt"
    victim.write_text("keep me")
    (indexes / "link.sqlite").symlink_to(victim)
    folder = str(root["root"] / "photos")
    assert retrieve(client, full_checkpoint, sources=[folder], index="photos", rebuild=True).status_code == 200
    assert retrieve(client, full_checkpoint, sources=[folder], index="notes", rebuild=True).status_code == 422
    assert retrieve(client, full_checkpoint, sources=[folder], index="link").status_code == 403
    assert foreign.read_bytes() == b"someone else's data" and victim.read_text() == "keep me"
    assert (indexes / "notes.sqlite-wal").read_bytes() == b"a journal without its database"


def test_a_hub_id_never_loads_a_folder_of_the_same_name(full_checkpoint, tmp_path, monkeypatch):
    impostor = tmp_path / "BridgeTower" / "bridgetower-base-itm-mlm"
    shutil.copytree(full_checkpoint, impostor)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    app = create_app(Settings(device=DEVICE))
    with TestClient(app, base_url=LOCAL) as client:
        body = {"model": "BridgeTower/bridgetower-base-itm-mlm", "images": [DOT], "texts": ["a"]}
        answer = client.post("/v1/score", json=body)
        assert answer.status_code != 200 and "cache" in answer.json()["error"]


def test_a_full_pool_refuses_a_new_model_and_a_failed_load_unloads_nothing(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    first, second = str(checkpoints["full"]), str(checkpoints["itm_mlm"])
    app = create_app(Settings(models=[first, second], device=DEVICE, max_models=1))
    with TestClient(app, base_url=LOCAL) as client:
        pool, policy = app.state.pool, app.state.policy
        body = {"images": [DOT], "texts": ["a"]}
        assert client.post("/v1/score", json={"model": first, **body}).status_code == 200
        with pool.use(policy.model(first), None):  # a request holds the only slot
            busy = client.post("/v1/score", json={"model": second, **body})
            assert busy.status_code == 503 and "model slots" in busy.json()["error"]
        failed = client.post("/v1/score", json={"model": "BridgeTower/bridgetower-base-itm-mlm", **body})
        assert failed.status_code != 200 and list(pool.models) == [first]


def test_a_model_given_with_a_tilde_is_served(full_checkpoint, tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(full_checkpoint, home / "ck")
    monkeypatch.setenv("HOME", str(home))
    app = create_app(Settings(models=["~/ck"], device=DEVICE))
    with TestClient(app, base_url=LOCAL) as client:
        for name in ("~/ck", str(home / "ck")):
            answer = client.post("/v1/score", json={"model": name, "images": [DOT], "texts": ["a"]})
            assert answer.status_code == 200, answer.text
        assert len(app.state.pool.models) == 1


def test_an_empty_text_is_refused(client, full_checkpoint):
    answer = client.post("/v1/score", json={"model": str(full_checkpoint), "images": [DOT], "texts": [" "]})
    assert answer.status_code == 422 and "empty" in answer.json()["error"]


def test_vanishing_files_are_skips_never_500s(client, full_checkpoint, root, monkeypatch):
    from bridgetower_cli.index import files

    folder = root["root"] / "photos"
    shutil.copy(folder / "a.jpg", folder / "b.jpg")
    real_states = files.file_states

    def vanish(paths):
        paths = list(paths)
        (folder / "b.jpg").unlink()  # gone between the walk and the stat
        return real_states(paths)

    monkeypatch.setattr("bridgetower_cli.tasks.indexing.file_states", vanish)
    answer = retrieve(client, full_checkpoint, sources=[str(folder)], index="vanish", rerank_k=0)
    assert answer.status_code == 200 and [s["name"] for s in answer.json()["skipped"]] == [str(folder / "b.jpg")]
    assert np.isfinite([r["similarity"] for r in answer.json()["records"]]).all()
