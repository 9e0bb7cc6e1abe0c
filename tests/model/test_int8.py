"""--dtype int8: graphs that compute what the runtime computes, int8 close to float32, a cache that is never trusted
blindly, indexes that never mix precisions."""

from __future__ import annotations

import json
import sys
import threading

import pytest
import torch
from reference import rgb

from bridgetower_cli.errors import BtError
from bridgetower_cli.model import int8, runtime_for
from bridgetower_cli.model.int8 import GraphCache, QuantizedRuntime
from bridgetower_cli.model.loading import load_model
from bridgetower_cli.model.runtime import Runtime

pytest.importorskip("onnxruntime")

TEXTS = ["a cat", "an astronaut holding a camera in front of a white wall near the launch pad", "two dogs"]
IMAGES = ["cat.jpg", "cameraman-gray.png", "rocket.jpg"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "int8-cache"
    monkeypatch.setenv("BT_INT8_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def float32(checkpoints):
    return Runtime(load_model(checkpoints["full"], "full", "cpu", "float32"))


@pytest.fixture(scope="module")
def quantized(checkpoints, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BT_INT8_CACHE", str(tmp_path_factory.mktemp("int8")))
        return runtime_for(load_model(checkpoints["full"], "full", "cpu", "int8"))


def pixels(runtime, samples):
    return torch.stack([runtime.pixel_values(rgb(samples / name)) for name in IMAGES])


def test_exported_passes_compute_what_the_runtime_computes(float32, samples):
    """The modules exported to ONNX, run in torch float32, equal the runtime's passes (text padding and masks too)."""
    batch = pixels(float32, samples)
    images = float32.encode_images(batch)
    layers, itc = int8._ImagePass(float32)(batch)
    for k, state in enumerate(images):
        assert (layers[k] - state.layers).abs().max() <= 1e-5
        assert (itc[k] - state.itc_embedding).abs().max() <= 1e-5

    texts = float32.encode_texts(TEXTS)
    pairs = [(t, i) for t in texts for i in images]
    fused = float32.fuse([t for t, _ in pairs], [i for _, i in pairs])
    longest = max(t.length for t in texts)
    text_layers = torch.stack([torch.nn.functional.pad(t.layers, (0, 0, 0, longest - t.length)) for t, _ in pairs])
    mask = torch.tensor([[1] * t.length + [0] * (longest - t.length) for t, _ in pairs])
    text_out, image_out = int8._FusionPass(float32)(text_layers, torch.stack([i.layers for _, i in pairs]), mask)
    for k, (t, _) in enumerate(pairs):
        n = t.length
        assert (text_out[k, :n] - fused.text_features[k, :n]).abs().max() <= 1e-5
    assert (image_out - fused.image_features).abs().max() <= 1e-5


def test_int8_is_close_to_float32(float32, quantized, samples):
    assert isinstance(quantized, QuantizedRuntime) and quantized.loaded.precision == "int8"
    batch = pixels(float32, samples)
    exact, approx = float32.encode_images(batch), quantized.encode_images(batch)
    for e, a in zip(exact, approx):
        assert torch.cosine_similarity(e.itc_embedding, a.itc_embedding, dim=0) >= 0.999
        assert e.layers.shape == a.layers.shape
    exact_texts, approx_texts = float32.encode_texts(TEXTS), quantized.encode_texts(TEXTS)
    for e, a in zip(exact_texts, approx_texts):  # the text pass stays float32
        assert torch.equal(e.layers, a.layers) and torch.equal(e.itc_embedding, a.itc_embedding)
    pairs = [(t, i) for t in range(len(TEXTS)) for i in range(len(IMAGES))]
    scores = float32.match_scores([(exact_texts[t], exact[i]) for t, i in pairs], 4)
    approx_scores = quantized.match_scores([(approx_texts[t], approx[i]) for t, i in pairs], 4)
    for (logit, probability), (approx_logit, approx_probability) in zip(scores, approx_scores):
        assert abs(logit - approx_logit) <= 0.05 and abs(probability - approx_probability) <= 0.01
    fused = quantized.fuse([approx_texts[t] for t, _ in pairs], [approx[i] for _, i in pairs])
    reference = float32.fuse([exact_texts[t] for t, _ in pairs], [exact[i] for _, i in pairs])
    cosines = torch.cosine_similarity(quantized.cross_embeddings(fused), float32.cross_embeddings(reference), dim=1)
    assert cosines.min() >= 0.999


def entry_files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_graphs_are_built_once_and_a_damaged_or_stale_entry_is_rebuilt(checkpoints, cache, samples):
    path = checkpoints["full"]
    first = QuantizedRuntime(load_model(path, "full", "cpu", "int8"))
    graphs = sorted(cache.glob("*/int8.onnx"))
    assert len(graphs) == 2 and not list(cache.glob(".building-*"))
    stamps = {g: g.stat().st_mtime_ns for g in graphs}
    batch = pixels(first, samples)
    expected = torch.stack([s.itc_embedding for s in first.encode_images(batch)])

    QuantizedRuntime(load_model(path, "full", "cpu", "int8"))
    assert {g: g.stat().st_mtime_ns for g in graphs} == stamps  # used as built

    image_graph = next(g for g in graphs if "-image-" in g.parent.name)
    data = bytearray(image_graph.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte deep in the weights: still loads, computes garbage
    image_graph.write_bytes(bytes(data))
    manifest = next(g for g in graphs if "-fusion-" in g.parent.name).parent / "manifest.json"
    stale = json.loads(manifest.read_text())
    stale["key"]["onnxruntime"] = "0.0.1"  # built by another version
    manifest.write_text(json.dumps(stale))

    again = QuantizedRuntime(load_model(path, "full", "cpu", "int8"))
    assert image_graph.stat().st_mtime_ns != stamps[image_graph] and manifest.stat().st_mtime_ns
    assert json.loads(manifest.read_text())["key"]["onnxruntime"] != "0.0.1"
    assert torch.equal(torch.stack([s.itc_embedding for s in again.encode_images(batch)]), expected)


def test_the_cache_never_deletes_what_bt_did_not_build(tmp_path):
    cache = GraphCache(tmp_path)
    key = {"checkpoint": "abc", "pass": "image"}
    foreign = cache.entry(key)
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BtError, match="not bt's to replace"):
        cache.get_or_build(key, lambda d: (d / "int8.onnx").write_bytes(b"graph") and "int8.onnx")
    assert (foreign / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".building-*"))


def test_builders_racing_for_one_entry_all_get_a_valid_graph(tmp_path):
    cache = GraphCache(tmp_path)
    key = {"checkpoint": "abc", "pass": "image"}
    start = threading.Barrier(4)
    results, errors = [], []

    def build(directory):
        (directory / "int8.onnx").write_bytes(b"graph")
        return "int8.onnx"

    def builder():
        start.wait()
        try:
            results.append(cache.get_or_build(key, build))
        except BtError as error:
            errors.append(error)

    threads = [threading.Thread(target=builder) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(results) == 4
    assert all(path.read_bytes() == b"graph" for path in results)
    assert [p.name for p in tmp_path.iterdir()] == [cache.entry(key).name]


def test_an_index_never_mixes_precisions(bt, checkpoints, cache, samples, tmp_path):
    index = tmp_path / "photos.sqlite"
    model = ["-m", checkpoints["full"], "--index", index]
    built = bt("index", samples, *model, "--dtype", "int8")
    assert built.code == 0, built.stderr
    stats = bt("index", "--stats", *model, "-f", "json").json()
    assert stats["fingerprint"].endswith("+int8") and stats["model"].endswith("(int8)")
    mixed = bt("retrieve", "a cat", *model, "-n", "--dtype", "float32")
    assert mixed.code == 1 and "was built with another model or dtype" in mixed.stderr
    assert len(mixed.stderr.strip().splitlines()) == 1
    found = bt("retrieve", "a cat", *model, "-n", "--dtype", "int8", "-f", "json")
    assert found.code == 0 and len(found.json()) == 5


def test_int8_refusals_are_one_line(bt, checkpoints, cache, samples, monkeypatch):
    explain = bt("explain", samples / "cat.jpg", "a cat", "-m", checkpoints["full"], "--dtype", "int8")
    assert explain.code == 2 and "no gradients" in explain.stderr and "--dtype float32" in explain.stderr
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the [int8] extra were not installed
    missing = bt("score", samples / "cat.jpg", "a cat", "-m", checkpoints["full"], "--dtype", "int8")
    assert missing.code == 1 and "bridgetower-cli[int8]" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
