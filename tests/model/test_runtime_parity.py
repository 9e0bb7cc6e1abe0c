"""The runtime (encode once, fuse many) equals the stock transformers classes for every head and config."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE
from reference import contrastive, itm_logits, mlm_logits, rgb

from bridgetower_cli.errors import BtError
from bridgetower_cli.model.loading import load_model
from bridgetower_cli.model.runtime import Runtime
from bridgetower_cli.testing import build_checkpoint

pytestmark = pytest.mark.slow  # builds checkpoints and compares with the stock classes

TEXTS = [
    "a cat",
    "a <mask> looking out of the <mask>",
    "an astronaut holding a camera in front of a white wall near the launch pad on a snowy mountain at night",
]
IMAGES = ["cat.jpg", "cameraman-gray.png", "rocket.jpg", "astronaut.jpg"]
VARIANTS = {
    "default": {},
    "separate-transforms": {"share_cross_modal_transformer_layers": False},
    "scaled_add": {"link_tower_type": "scaled_add"},
    "interpolate": {"link_tower_type": "interpolate"},
}


def load(path, needs=()):
    return load_model(path, str(path), DEVICE, "float32", needs)


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tmp_path_factory):
    path = build_checkpoint(tmp_path_factory.mktemp(request.param), "tiny", seed=7, **VARIANTS[request.param])
    return request.param, path


def all_pairs(runtime, samples):
    """Fuse every image with every text, in one batch of mixed text lengths and mixed images."""
    images = [rgb(samples / name) for name in IMAGES]
    text_states = runtime.encode_texts(TEXTS)
    image_states = runtime.encode_images(torch.stack([runtime.pixel_values(image) for image in images]))
    pairs = [(i, j) for i in range(len(images)) for j in range(len(TEXTS))]
    fused = runtime.fuse([text_states[j] for _, j in pairs], [image_states[i] for i, _ in pairs])
    return images, text_states, image_states, pairs, fused


def test_every_head_equals_stock(variant, samples):
    name, path = variant
    runtime = Runtime(load(path))
    images, text_states, image_states, pairs, fused = all_pairs(runtime, samples)
    itm = runtime.itm_logits(fused).cpu()
    cross = runtime.cross_embeddings(fused).cpu() if "itc" in runtime.loaded.heads else None
    for k, (i, j) in enumerate(pairs):
        assert (itm[k] - itm_logits(path, images[i], TEXTS[j])).abs().max() <= 1e-5
        reference, input_ids = mlm_logits(path, images[i], TEXTS[j])
        assert torch.equal(text_states[j].input_ids.cpu(), input_ids)
        mine = runtime.mlm_logits(fused, k, list(range(len(input_ids)))).cpu()
        assert (mine - reference).abs().max() <= 1e-5
        if cross is not None:
            stock = contrastive(path, images[i], TEXTS[j])
            assert (text_states[j].itc_embedding.cpu() - stock.text_embeds[0]).abs().max() <= 1e-5
            assert (image_states[i].itc_embedding.cpu() - stock.image_embeds[0]).abs().max() <= 1e-5
            assert (cross[k] - stock.cross_embeds[0]).abs().max() <= 1e-5
    assert (cross is None) == (name == "separate-transforms")


def test_batch_composition_changes_nothing(full_checkpoint, samples):
    runtime = Runtime(load(full_checkpoint))
    _, text_states, image_states, pairs, fused = all_pairs(runtime, samples)
    together = runtime.itm_logits(fused)
    for k, (i, j) in enumerate(pairs):
        alone = runtime.itm_logits(runtime.fuse([runtime.encode_texts([TEXTS[j]])[0]], [image_states[i]]))
        assert (alone[0] - together[k]).abs().max() <= 1e-5


def test_heads_are_read_from_the_weights(checkpoints):
    assert load(checkpoints["full"]).heads == ("itm", "mlm", "itc")
    assert load(checkpoints["itm_mlm"]).heads == ("itm", "mlm")
    assert load(checkpoints["backbone"]).heads == ()


def test_one_backbone_for_all_heads(full_checkpoint):
    from transformers import BridgeTowerModel

    model = load(full_checkpoint).network
    backbone = sum(p.numel() for p in BridgeTowerModel.from_pretrained(full_checkpoint).parameters())
    heads = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("bridgetower."))
    assert sum(p.numel() for p in model.parameters()) == backbone + heads
    assert heads > 0


def test_missing_head_is_refused_with_a_checkpoint_that_has_it(checkpoints):
    with pytest.raises(BtError, match="no contrastive embedding \\(ITC\\) head") as error:
        load(checkpoints["itm_mlm"], needs=("itc",))
    assert "bridgetower-large-itm-mlm-itc" in error.value.hint


def test_shared_link_towers_are_refused(tmp_path):
    path = build_checkpoint(tmp_path / "shared-links", "tiny", share_link_tower_layers=True)
    with pytest.raises(BtError, match="share_link_tower_layers"):
        load(path)
