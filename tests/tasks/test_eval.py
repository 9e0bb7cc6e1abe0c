"""`bt eval`: the BridgeTower retrieval protocol, checked against the stock classes and a direct recall count."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import DEVICE
from reference import contrastive, itm_logits, rgb

from bridgetower_cli.model.loading import load_model
from bridgetower_cli.model.runtime import Runtime
from bridgetower_cli.records import Outcome
from bridgetower_cli.tasks.evaluation import UNSCORED, load_caption_set, protocol_scores, recalls

RECALL_FIELDS = ["txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean"]


@pytest.fixture(scope="module")
def runtime(full_checkpoint):
    return Runtime(load_model(full_checkpoint, "full", DEVICE, "float32"))


@pytest.fixture(scope="module")
def caption_set(samples):
    return load_caption_set(samples / "captions.json", samples, "test")


def direct_recalls(matrix: list[list[float]], text_image: list[int]) -> dict[str, float]:
    """Recall counted one query at a time, by sorting."""
    images, texts = len(matrix), len(matrix[0])
    result = {}
    for k in (1, 5, 10):
        best = [sorted(range(texts), key=lambda t, i=i: -matrix[i][t])[:k] for i in range(images)]
        result[f"txt_r{k}"] = 100 * sum(any(text_image[t] == i for t in best[i]) for i in range(images)) / images
        best = [sorted(range(images), key=lambda i, t=t: -matrix[i][t])[:k] for t in range(texts)]
        result[f"img_r{k}"] = 100 * sum(text_image[t] in best[t] for t in range(texts)) / texts
    return result


def stock_itm(path, caption_set) -> torch.Tensor:
    return torch.tensor(
        [[itm_logits(path, rgb(image), text)[1].item() for text in caption_set.texts] for image in caption_set.images]
    )


def stock_similarities(path, caption_set) -> torch.Tensor:
    images = torch.stack([contrastive(path, rgb(i), "a").image_embeds[0] for i in caption_set.images])
    texts = torch.stack([contrastive(path, rgb(caption_set.images[0]), t).text_embeds[0] for t in caption_set.texts])
    return images @ texts.T


def test_the_sample_caption_set(caption_set):
    assert len(caption_set.images) == 5 and len(caption_set.texts) == 10  # the train entry is left out
    assert caption_set.text_image == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_with_k_test_covering_everything_the_matrix_is_all_pairs_itm(runtime, full_checkpoint, caption_set):
    scores, text_image, scored = protocol_scores(runtime, caption_set, Outcome(), k_test=10)
    expected = stock_itm(full_checkpoint, caption_set)
    assert scored == 50 and float((scores - expected).abs().max()) <= 1e-5
    assert text_image.tolist() == caption_set.text_image
    measured = recalls(scores, text_image)
    for name, value in direct_recalls(expected.tolist(), caption_set.text_image).items():
        assert measured[name] == pytest.approx(value, abs=1e-4), name


def test_with_a_small_k_test_exactly_the_protocols_pairs_are_scored(runtime, full_checkpoint, caption_set):
    scores, text_image, scored = protocol_scores(runtime, caption_set, Outcome(), k_test=2)
    similarities = stock_similarities(full_checkpoint, caption_set)
    wanted = torch.zeros_like(similarities, dtype=torch.bool)
    for i in range(5):  # image -> text: each image's 2 most similar texts
        wanted[i, similarities[i].topk(2).indices] = True
    for t in range(10):  # text -> image: each text's 2 most similar images
        wanted[similarities[:, t].topk(2).indices, t] = True
    assert torch.equal(scores != UNSCORED, wanted) and scored == int(wanted.sum())
    expected = stock_itm(full_checkpoint, caption_set)
    assert float((scores[wanted] - expected[wanted]).abs().max()) <= 1e-5
    merged = torch.where(wanted, expected, torch.full_like(expected, UNSCORED))
    direct = direct_recalls(merged.tolist(), caption_set.text_image)
    measured = recalls(scores, text_image)
    assert measured["txt_r1"] == pytest.approx(direct["txt_r1"]) and measured["img_r1"] == pytest.approx(
        direct["img_r1"]
    )


def test_itc_only_ranks_by_similarity(runtime, full_checkpoint, caption_set):
    scores, _, scored = protocol_scores(runtime, caption_set, Outcome(), itc_only=True)
    assert scored == 0
    assert float((scores - stock_similarities(full_checkpoint, caption_set)).abs().max()) <= 1e-5


def lavis_format(samples, tmp_path):
    karpathy = json.loads((samples / "captions.json").read_text())
    entries = [
        {"image": e["filename"], "caption": [s["raw"] for s in e["sentences"]]}
        for e in karpathy["images"]
        if e["split"] == "test"
    ]
    path = tmp_path / "lavis_test.json"
    path.write_text(json.dumps(entries))
    return path


def test_the_two_annotation_formats_give_the_same_result(bt, full_checkpoint, samples, tmp_path):
    args = ["-m", full_checkpoint, "--k-test", "3", "-f", "json"]
    karpathy = bt("eval", samples / "captions.json", *args)
    lavis = bt("eval", lavis_format(samples, tmp_path), "--images", samples, *args)
    assert karpathy.code == 0 and lavis.code == 0, karpathy.stderr + lavis.stderr
    one, two = karpathy.json(), lavis.json()
    assert {k: one[k] for k in RECALL_FIELDS} == {k: two[k] for k in RECALL_FIELDS}
    assert one["images"] == 5 and one["texts"] == 10 and one["k_test"] == 3 and one["protocol"] == "itm+itc"
    assert set(one) >= {*RECALL_FIELDS, "images", "texts", "k_test", "model", "seconds"}


def test_a_missing_image_makes_the_numbers_not_comparable(bt, full_checkpoint, samples, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(samples, folder)
    (folder / "rocket.jpg").unlink()
    result = bt("eval", samples / "captions.json", "--images", folder, "-m", full_checkpoint, "-f", "json")
    assert result.code == 3
    record = result.json()
    assert record["images"] == 4 and record["texts"] == 8
    assert "1 of 5 images could not be read" in result.stderr and "not comparable" in result.stderr


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ('{"images": [{"filename": "cat.jpg", "split": "test"}]}', "images[0] has no 'sentences'"),
        ('[{"image": "cat.jpg", "caption": []}]', "entry [0] has no captions"),
        ('{"images": [{"filename": "cat.jpg", "split": "val", "sentences": []}]}', "has no images in split 'test'"),
        ('"just a string"', "the top level is neither"),
    ],
)
def test_a_malformed_annotation_file_says_where(bt, tmp_path, content, message):
    path = tmp_path / "annotations.json"
    path.write_text(content)
    result = bt("eval", path, "-m", tmp_path)
    assert result.code == 1
    (line,) = result.stderr.strip().splitlines()
    assert message in line and line.startswith("bt: error: ")


def test_without_itc_heads_every_pair_is_scored(bt, checkpoints, samples):
    result = bt("eval", samples / "captions.json", "-m", checkpoints["itm_mlm"], "--k-test", "1", "-f", "json")
    assert result.code == 0, result.stderr
    assert result.json()["pairs_scored"] == 50 and result.json()["protocol"] == "itm"
    assert "scoring all 5 x 10 = 50 pairs" in result.stderr
