"""Every operation's bad inputs, through the command line, the Python API and a server: each refused before any
model work, with the same words from each (the request types of ``bridgetower_cli.operations`` check themselves)."""

from __future__ import annotations

import base64
import json
import re

import pytest
from conftest import DEVICE

import bridgetower_cli as bt_api
from bridgetower_cli.operations import Evaluate
from bridgetower_cli.sources import ImageSource

pytestmark = pytest.mark.slow
LOCAL = "http://127.0.0.1"


def cases(samples, annotations) -> list[tuple]:
    """(name, the command line, the Python call on a Model, the server's route and body, words of the answer)."""
    cat = str(samples / "cat.jpg")
    sent = {"name": "cat.jpg", "data": base64.b64encode((samples / "cat.jpg").read_bytes()).decode()}
    by_path = [{"name": "cat.jpg", "path": cat}]
    return [
        ("score top-k", ["score", cat, "a cat", "-k", "0"], lambda m: m.score(cat, ["a cat"], top_k=0),
         ("/v1/score", {"images": [sent], "texts": ["a cat"], "top_k": 0}), "top-k must be a whole number"),
        ("score empty text", ["score", cat, "-t", " "], lambda m: m.score(cat, [" "]),
         ("/v1/score", {"images": [sent], "texts": [" "]}), "text 1 is empty"),
        ("score no images", ["score", "a cat"], lambda m: m.score([], ["a cat"]),
         ("/v1/score", {"images": [], "texts": ["a cat"]}), "no images given to score"),
        ("fill-mask top-k", ["fill-mask", cat, "a <mask>", "-k", "0"], lambda m: m.fill_mask(cat, ["a <mask>"], 0),
         ("/v1/fill-mask", {"images": [sent], "texts": ["a <mask>"], "top_k": 0}), "top-k must be"),
        ("fill-mask no mask", ["fill-mask", cat, "a cat"], lambda m: m.fill_mask(cat, ["a cat"]),
         ("/v1/fill-mask", {"images": [sent], "texts": ["a cat"]}), "no text holds a <mask>"),
        ("embed kind", ["embed", "-t", "a cat", "--kind", "picture"],
         lambda m: m.embed(texts=["a cat"], kind="picture"),
         ("/v1/embed", {"kind": "picture", "texts": ["a cat"]}), "kind 'picture' is not one of"),
        ("embed cross", ["embed", "-t", "a cat", "--kind", "cross"],
         lambda m: m.embed(texts=["a cat"], kind="cross"),
         ("/v1/embed", {"kind": "cross", "texts": ["a cat"]}), "kind cross needs images and texts"),
        ("rank texts", ["retrieve", "--image", cat, "a cat", "a dog", "-r", "-1"],
         lambda m: m.rank_texts(cat, ["a cat", "a dog"], rerank_k=-1),
         ("/v1/retrieve", {"image": sent, "texts": ["a cat", "a dog"], "rerank_k": -1}), "rerank-k must be"),
        ("search top-k", ["retrieve", "a cat", str(samples), "-k", "0"],
         lambda m: m.retrieve("a cat", [samples], top_k=0),
         ("/v1/retrieve", {"query": "a cat", "sources": [str(samples)], "top_k": 0}), "top-k must be"),
        ("classify labels", ["classify", cat, "-l", "cat"], lambda m: m.classify(cat, ["cat"]),
         ("/v1/classify", {"images": [sent], "labels": ["cat"]}), "classifying needs two or more"),
        ("classify method", ["classify", cat, "-l", "cat,dog", "--method", "clip"],
         lambda m: m.classify(cat, ["cat", "dog"], method="clip"),
         ("/v1/classify", {"images": [sent], "labels": ["cat", "dog"], "method": "clip"}), "method 'clip' is not"),
        ("explain layer", ["explain", cat, "a cat", "--layer", "-1"], lambda m: m.explain(cat, ["a cat"], layer=-1),
         ("/v1/explain", {"images": [sent], "texts": ["a cat"], "layer": -1}), "layer must be"),
        ("eval k-test", ["eval", str(annotations), "--k-test", "0"],
         lambda m: m.run(Evaluate([ImageSource("cat.jpg", path=cat)], ["a cat"], [0], k_test=0)),
         ("/v1/eval", {"images": by_path, "texts": ["a cat"], "text_image": [0], "k_test": 0}), "k-test must be"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def annotations(samples, tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "test.json"
    path.write_text(json.dumps([{"image": str(samples / "cat.jpg"), "caption": ["a cat"]}]))
    return path


@pytest.fixture(scope="module")
def server(full_checkpoint, samples):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bridgetower_cli.server import Settings, create_app

    app = create_app(Settings(models=[str(full_checkpoint)], device=DEVICE, allow_paths=[samples.resolve()]))
    with TestClient(app, base_url=LOCAL) as client:
        yield client


def test_each_bad_input_is_refused_in_the_same_words_everywhere(bt, server, full_checkpoint, samples, annotations):
    model = bt_api.load(str(full_checkpoint), device=DEVICE)
    for name, args, call, (route, body), words in cases(samples, annotations):
        result = bt(*args, "-m", full_checkpoint)
        said = re.fullmatch(r"bt: error: (.*)\n", result.stderr.splitlines(keepends=True)[-1])
        assert result.code in (1, 2) and said and words in said.group(1), (name, result.stderr)
        with pytest.raises(bt_api.BtError) as raised:
            call(model)
        answer = server.post(route, json={"model": str(full_checkpoint), **body})
        assert answer.status_code == 422, (name, answer.text)
        sent = answer.json()
        shown = sent["error"] + (f" (hint: {sent['hint']})" if sent.get("hint") else "")
        assert said.group(1) == str(raised.value) == shown, name


def test_nothing_loads_for_a_refused_request(full_checkpoint, samples, annotations, monkeypatch):
    """The API refuses before the model loads (a load would fail: the loader is broken here on purpose)."""
    from bridgetower_cli.model import loading

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded for a request that cannot run")

    monkeypatch.setattr(loading, "load_model", no_load)
    model = bt_api.load(str(full_checkpoint), device=DEVICE)
    for _name, _, call, _, words in cases(samples, annotations):
        with pytest.raises(bt_api.BtError, match=re.escape(words)):
            call(model)


@pytest.mark.parametrize(
    "arguments, words",
    [
        ({"device": "gpu"}, "'gpu' is not a device"),
        ({"dtype": "int4"}, "'int4' is not a dtype"),
        ({"threads": 0}, "threads must be a whole number"),
        ({"model": "bridgetower-base-itm-mlm"}, "did you mean"),
    ],
)
def test_load_refuses_what_cannot_run(full_checkpoint, arguments, words):
    with pytest.raises(bt_api.BtError, match=re.escape(words)):
        bt_api.load(**{"model": str(full_checkpoint), **arguments})
