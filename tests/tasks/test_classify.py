"""`bt classify` and `bt eval --task classification`: probabilities equal a computation with the stock classes on the
same prompts; prompt ensembling is the mean of normalised embeddings, normalised; accuracies equal a direct count."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch
from PIL import ImageOps
from reference import contrastive, itm_logits, rgb, stock
from transformers import BridgeTowerForContrastiveLearning

from bridgetower_cli.tasks.labels import DEFAULT_TEMPLATES

LABELS = ["a cat", "a rocket", "a cup of coffee"]
TEMPLATES = ["a photo of {}.", "{}", "a blurry picture of {}"]
IMAGES = ["cat.jpg", "rocket.jpg", "coffee.jpg"]


def stock_itc(path, image, labels, templates) -> torch.Tensor:
    """Softmax over the labels of logit_scale.exp() x cosine, each label's stock text embeddings averaged over its
    prompts and normalised again (CLIP's ensembling)."""
    image_embeds = contrastive(path, image, "a").image_embeds[0]
    ensembled = []
    for label in labels:
        texts = torch.stack([contrastive(path, image, t.replace("{}", label)).text_embeds[0] for t in templates])
        ensembled.append(torch.nn.functional.normalize(texts.mean(dim=0), dim=-1))
    scale = stock(BridgeTowerForContrastiveLearning, path).logit_scale.exp()
    return (scale * torch.stack(ensembled) @ image_embeds).double().softmax(dim=0)


def stock_itm(path, image, labels, templates) -> torch.Tensor:
    """Softmax over the labels of the ITM match logit averaged over the prompts."""
    scores = [
        torch.stack([itm_logits(path, image, t.replace("{}", label))[1] for t in templates]).mean() for label in labels
    ]
    return torch.stack(scores).double().softmax(dim=0)


def by_image(records: list[dict]) -> dict[str, dict[str, float]]:
    found: dict = {}
    for record in records:
        found.setdefault(record["image"], {})[record["label"]] = record["probability"]
    return found


@pytest.mark.parametrize("method, reference", [("itc", stock_itc), ("itm", stock_itm)])
def test_probabilities_equal_the_stock_classes(bt, full_checkpoint, samples, method, reference):
    images = [samples / name for name in IMAGES]
    templates = [arg for t in TEMPLATES for arg in ("--template", t)]
    result = bt("classify", *images, "-l", ",".join(LABELS), *templates, "--method", method, "-k", "3",
                "-m", full_checkpoint, "-f", "json")  # fmt: skip
    assert result.code == 0, result.stderr
    records = result.json()
    assert [r["image"] for r in records] == [str(i) for i in images for _ in LABELS]
    for image, found in by_image(records).items():
        expected = reference(full_checkpoint, rgb(image), LABELS, TEMPLATES)
        assert max(abs(found[label] - expected[k].item()) for k, label in enumerate(LABELS)) <= 1e-5
        probabilities = [r["probability"] for r in records if r["image"] == image]
        assert probabilities == sorted(probabilities, reverse=True)


def test_default_templates_are_clips_seven_and_top_k_keeps_the_best(bt, full_checkpoint, samples):
    result = bt("classify", samples / "cat.jpg", "-l", ",".join(LABELS), "-k", "2", "-m", full_checkpoint, "-f", "json")
    records = result.json()
    expected = stock_itc(full_checkpoint, rgb(samples / "cat.jpg"), LABELS, list(DEFAULT_TEMPLATES))
    best = sorted(range(3), key=lambda k: -expected[k].item())[:2]
    assert [r["label"] for r in records] == [LABELS[k] for k in best]
    assert all(abs(r["probability"] - expected[k].item()) <= 1e-5 for r, k in zip(records, best))
    assert len(DEFAULT_TEMPLATES) == 7 and all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)


def test_rerank_over_every_label_equals_itm(bt, full_checkpoint, samples):
    args = ["classify", samples / "cat.jpg", samples / "rocket.jpg", "-l", ",".join(LABELS), "--template", "a {}",
            "-m", full_checkpoint, "-f", "json", "-k", "3"]  # fmt: skip
    itm = bt(*args, "--method", "itm").json()
    rerank = bt(*args, "--method", "rerank", "--rerank-k", "3").json()
    assert [(r["image"], r["label"]) for r in rerank] == [(r["image"], r["label"]) for r in itm]
    assert all(abs(a["probability"] - b["probability"]) <= 1e-9 for a, b in zip(rerank, itm))
    shortlisted = bt(*args, "--method", "rerank", "--rerank-k", "2").json()  # (the shortlist only)
    assert len(shortlisted) == 4 and abs(sum(r["probability"] for r in shortlisted[:2]) - 1) <= 1e-9


def test_a_checkpoint_without_itc_heads_classifies_by_itm(bt, checkpoints, samples):
    args = ["classify", samples / "cat.jpg", "-l", ",".join(LABELS), "--template", "a {}", "-f", "json"]
    auto = bt(*args, "-m", checkpoints["itm_mlm"])
    assert auto.code == 0, auto.stderr
    expected = stock_itm(checkpoints["itm_mlm"], rgb(samples / "cat.jpg"), LABELS, ["a {}"])
    assert all(
        abs(p - expected[LABELS.index(label)].item()) <= 1e-5 for label, p in by_image(auto.json()).popitem()[1].items()
    )
    refused = bt(*args, "-m", checkpoints["itm_mlm"], "--method", "itc")
    assert refused.code == 1 and "has no contrastive embedding (ITC) head" in refused.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["-l", "cat"], "1 label(s): classifying needs two or more"),
        (["-l", "cat,dog,cat"], "the label 'cat' is given twice"),
        (["-l", "cat,dog", "--template", "a photo"], "must hold {} once"),
    ],
)
def test_bad_labels_and_templates_are_one_line_before_any_model(bt, samples, tmp_path, args, message):
    result = bt("classify", samples / "cat.jpg", *args, "-m", tmp_path / "no-such-model")
    assert result.code == 1 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_html_shows_the_labels_with_thumbnails(bt, full_checkpoint, samples):
    result = bt("classify", samples / "cat.jpg", "-l", ",".join(LABELS), "-m", full_checkpoint, "-f", "html")
    assert result.code == 0 and result.stdout.count("<tr><td>a ") == 3 and "data:image/jpeg;base64," in result.stdout


@pytest.fixture
def image_folder(tmp_path, samples):
    """Three classes of two images each (a sample and its mirror image; the astronaut among the rockets)."""
    root = tmp_path / "folder"
    for label, names in {
        "cat": ["cat.jpg"],
        "coffee": ["coffee.jpg"],
        "rocket": ["rocket.jpg", "astronaut.jpg"],
    }.items():
        (root / label).mkdir(parents=True)
        for name in names:
            shutil.copy(samples / name, root / label / name)
            ImageOps.mirror(rgb(samples / name)).save(root / label / f"mirrored-{name}")
    return root


def test_accuracies_equal_a_direct_count(bt, full_checkpoint, image_folder, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a cat\na cup of coffee\na rocket\n")
    matrix = tmp_path / "confusion.csv"
    args = ["--template", "a photo of {}.", "-m", full_checkpoint, "-f", "json"]
    result = bt("eval", "--task", "classification", image_folder, "--labels-file", labels, "--confusion", matrix, *args)
    assert result.code == 0, result.stderr
    record = result.json()
    classes = ["a cat", "a cup of coffee", "a rocket"]
    images = sorted(p for p in image_folder.rglob("*.jpg"))
    predicted = bt("classify", *images, "-l", ",".join(classes), "-k", "3", *args).json()
    ranked = {}
    for r in predicted:
        ranked.setdefault(r["image"], []).append(r["label"])
    truth = {str(p): classes[["cat", "coffee", "rocket"].index(p.parent.name)] for p in images}
    hits = [ranked[name][0] == truth[name] for name in truth]
    recalls = {
        c: 100 * sum(h for n, h in zip(truth, hits) if truth[n] == c) / sum(truth[n] == c for n in truth)
        for c in classes
    }
    assert record["images"] == 8 and record["classes"] == 3 and record["method"] == "itc" and record["templates"] == 1
    assert abs(record["acc1"] - 100 * sum(hits) / 8) <= 1e-9
    assert record["acc5"] == 100.0  # (three classes: the truth is always in the top five)
    assert record["per_class_recall"] == pytest.approx(recalls)
    assert record["mean_per_class_recall"] == pytest.approx(sum(recalls.values()) / 3)
    rows = list(csv.reader(matrix.open()))
    assert rows[0][1:] == classes and [row[0] for row in rows[1:]] == classes
    counted = [[sum(1 for n in truth if truth[n] == t and ranked[n][0] == p) for p in classes] for t in classes]
    assert [[int(v) for v in row[1:]] for row in rows[1:]] == counted


def test_an_unreadable_image_is_skipped_and_the_rest_counted(bt, full_checkpoint, image_folder):
    (image_folder / "cat" / "broken.jpg").write_text("not a jpeg")
    result = bt("eval", "--task", "classification", image_folder, "-m", full_checkpoint, "-f", "json")
    assert result.code == 3 and "broken.jpg" in result.stderr and result.json()["images"] == 8


def test_the_python_api_classifies_as_the_cli(bt, full_checkpoint, samples):
    from conftest import DEVICE

    import bridgetower_cli as bt_api

    model = bt_api.load(str(full_checkpoint), device=DEVICE, dtype="float32")
    records = model.classify([str(samples / "cat.jpg")], LABELS, method="itm", templates=["a {}"], top_k=2)
    cli = bt("classify", samples / "cat.jpg", "-l", ",".join(LABELS), "--method", "itm", "--template", "a {}", "-k",
             "2", "-m", full_checkpoint, "-f", "json").json()  # fmt: skip
    assert [r.to_dict() for r in records] == cli
    with pytest.raises(bt_api.BtError, match="method 'clip' is not one of"):
        model.classify([str(samples / "cat.jpg")], LABELS, method="clip")


def test_rerank_accuracy_ranks_past_the_shortlist_by_itc(bt, full_checkpoint, samples, tmp_path):
    """``--method rerank -r 3`` over six classes: acc5 counts the top five of the ITM-ordered shortlist followed by
    the other labels in ITC order (not the shortlist alone, which would make it an acc3)."""
    classes = ["astronaut", "cameraman", "cat", "coffee", "dog", "rocket"]
    folder = tmp_path / "six"
    for label, name in zip(classes, ["astronaut.jpg", "cameraman-gray.png", "cat.jpg", "coffee.jpg", "cat.jpg",
                                     "rocket.jpg"]):  # fmt: skip
        (folder / label).mkdir(parents=True)
        shutil.copy(samples / name, folder / label / name)
        ImageOps.mirror(rgb(samples / name)).save(folder / label / f"mirrored-{name}")
    args = ["--template", "a photo of {}.", "-m", full_checkpoint, "-f", "json"]
    record = bt("eval", "--task", "classification", folder, "--method", "rerank", "-r", "3", *args).json()
    images = sorted(p for p in folder.rglob("*") if p.is_file())
    label_list = ",".join(classes)
    shortlist = bt("classify", *images, "-l", label_list, "--method", "rerank", "-r", "3", "-k", "3", *args).json()
    by_itc = bt("classify", *images, "-l", label_list, "--method", "itc", "-k", "6", *args).json()
    ranked: dict[str, list[str]] = {}
    for r in shortlist:
        ranked.setdefault(r["image"], []).append(r["label"])
    for r in by_itc:
        if r["label"] not in ranked[r["image"]][:3]:
            ranked[r["image"]].append(r["label"])
    top5 = sum(p.parent.name in ranked[str(p)][:5] for p in images)
    top3 = sum(p.parent.name in ranked[str(p)][:3] for p in images)
    assert record["images"] == 12 and top5 > top3  # (the case tells the two apart)
    assert record["acc5"] == 100 * top5 / 12
