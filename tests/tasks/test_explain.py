"""`bt explain`: Grad-CAM maps equal a reference computed on the stock ITM class; pictures open at the photo's size."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE
from PIL import Image
from reference import processor, rgb, stock
from transformers import BridgeTowerForImageAndTextRetrieval

from bridgetower_cli.model.loading import load_model
from bridgetower_cli.model.runtime import Runtime
from bridgetower_cli.records import Outcome
from bridgetower_cli.sources import expand_image_sources
from bridgetower_cli.tasks.explain import default_layer, explain

TEXT = "a cat lying on a couch"


def stock_gradcam(path, image, text: str, layer: int) -> tuple[torch.Tensor, float]:
    """Grad-CAM the LAVIS way on the stock class: a hook on the layer's text cross-attention, the gradient of the
    match logit. Returns the per-token maps [tokens, patches] (CLS and SEP included) and the match probability."""
    model = stock(BridgeTowerForImageAndTextRetrieval, path)
    encoding = processor(path)(image, text, return_tensors="pt")
    captured = {}
    hook = model.bridgetower.cross_modal_text_layers[layer].crossattention.register_forward_hook(
        lambda module, args, output: captured.update(attention=output[1])
    )
    try:
        with torch.enable_grad():
            logits = model(**encoding).logits
            (gradient,) = torch.autograd.grad(logits[0, 1], captured["attention"])
    finally:
        hook.remove()
    attention = captured["attention"].detach()
    cam = (attention[0, :, :, 1:] * gradient[0, :, :, 1:].clamp(min=0)).mean(dim=0)
    return cam, logits.softmax(-1)[0, 1].item()


def relative(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def runtime(full_checkpoint):
    return Runtime(load_model(full_checkpoint, "full", DEVICE, "float32"))


def test_maps_equal_the_stock_class_with_a_hook(runtime, full_checkpoint, samples):
    layer = default_layer(runtime)
    sources = expand_image_sources([str(samples / "cat.jpg"), str(samples / "cameraman-gray.png")])
    records = [record for record, _ in explain(runtime, sources, [TEXT, "a rocket"], Outcome(), layer=layer)]
    assert len(records) == 4
    for record in records:
        cam, probability = stock_gradcam(full_checkpoint, rgb(record.image), record.text, layer)
        side = int(cam.shape[-1] ** 0.5)
        words = cam[1:-1].reshape(-1, side, side)
        assert relative(record.grid, words.mean(dim=0)) <= 1e-5
        assert len(record.tokens) == words.shape[0]
        for token, expected in zip(record.tokens, words):
            assert relative(token.grid, expected) <= 1e-5
        assert abs(record.probability - probability) <= 1e-5


def test_word_maps_vanish_at_the_last_layer_only(runtime, samples):
    sources = expand_image_sources([str(samples / "cat.jpg")])
    last = len(runtime.tower.cross_modal_text_layers) - 1
    ((at_last, _),) = explain(runtime, sources, [TEXT], Outcome(), layer=last)
    ((at_default, _),) = explain(runtime, sources, [TEXT], Outcome())
    assert at_default.layer == default_layer(runtime) != last
    assert all(torch.tensor(t.grid).abs().max() == 0 for t in at_last.tokens)
    assert all(torch.tensor(t.grid).abs().max() > 0 for t in at_default.tokens)


def test_each_image_and_text_is_encoded_once(runtime, samples):
    calls = {"vision": 0, "text": 0}
    hooks = [
        runtime.tower.vision_model.visual.embeddings.register_forward_hook(
            lambda *a: calls.__setitem__("vision", calls["vision"] + 1)
        ),
        runtime.tower.text_model.embeddings.register_forward_hook(
            lambda *a: calls.__setitem__("text", calls["text"] + 1)
        ),
    ]
    try:
        sources = expand_image_sources([str(samples / "cat.jpg"), str(samples / "rocket.jpg")])
        records = list(explain(runtime, sources, [TEXT, "a rocket", "two cups"], Outcome(), batch_size=1))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(records) == 6 and calls == {"vision": 2, "text": 3}


def test_pictures_have_the_photos_size(bt, full_checkpoint, samples, tmp_path):
    result = bt(
        "explain", samples / "rocket.jpg", TEXT, "-m", full_checkpoint, "-o", tmp_path / "map.png", "-f", "json"
    )
    assert result.code == 0, result.stderr
    (record,) = result.json()
    assert record["picture"] == str(tmp_path / "map.png") and set(record) >= {"grid", "tokens", "layer", "probability"}
    with Image.open(tmp_path / "map.png") as picture:
        assert picture.format == "PNG" and picture.size == Image.open(samples / "rocket.jpg").size
        picture.verify()
    several = bt(
        "explain",
        samples / "cat.jpg",
        samples / "coffee.jpg",
        "a cat",
        "a cup",
        "-m",
        full_checkpoint,
        "--output-dir",
        tmp_path / "maps",
        "--words",
        "-f",
        "json",
    )
    assert several.code == 0 and sorted(p.name for p in (tmp_path / "maps").iterdir()) == [
        "cat--a-cat.png",
        "cat--a-cup.png",
        "coffee--a-cat.png",
        "coffee--a-cup.png",
    ]
    refused = bt("explain", samples / "cat.jpg", "a cat", "a cup", "-m", full_checkpoint, "-o", tmp_path / "x.png")
    assert refused.code == 1 and "use --output-dir" in refused.stderr


def test_a_published_large_layout_gives_a_21_by_21_grid(bt, published, samples):
    result = bt("explain", samples / "cat.jpg", TEXT, "-m", published["bridgetower-large-itm-mlm"], "-f", "json")
    assert result.code == 0, result.stderr
    (record,) = result.json()
    assert len(record["grid"]) == 21 and all(len(row) == 21 for row in record["grid"])


def test_a_checkpoint_without_itm_is_refused(bt, checkpoints, samples):
    result = bt("explain", samples / "cat.jpg", TEXT, "-m", checkpoints["itc"])
    assert result.code == 1 and "no image-text matching (ITM) head" in result.stderr
