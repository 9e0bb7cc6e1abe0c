"""`bt score`: every number equals the documented transformers loop on the same checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from reference import itm_logits, rgb

TEXTS = [
    "two cats",
    "a cup of coffee on a saucer next to the window",
    "an astronaut holding a camera in front of a white wall near the launch pad on a snowy mountain",
]


def test_score_equals_documented_loop(bt, full_checkpoint, samples):
    images = [samples / "cat.jpg", samples / "cameraman-gray.png", samples / "rocket.jpg"]
    result = bt("score", *images, *TEXTS, "--model", full_checkpoint, "-f", "json", "--batch-size", "2")
    assert result.code == 0, result.stderr
    records = result.json()
    assert len(records) == len(images) * len(TEXTS)
    assert {(r["image"], r["text"]) for r in records} == {(str(i), t) for i in images for t in TEXTS}
    for record in records:
        logits = itm_logits(full_checkpoint, rgb(record["image"]), record["text"])
        assert abs(record["logit"] - logits[1].item()) <= 1e-5
        assert abs(record["probability"] - logits.softmax(-1)[1].item()) <= 1e-5


def test_records_are_grouped_by_image_and_sorted(bt, full_checkpoint, samples):
    result = bt("score", samples / "coffee.jpg", samples / "cat.jpg", *TEXTS, "-m", full_checkpoint, "-f", "json")
    records = result.json()
    assert [r["image"] for r in records] == [str(samples / "coffee.jpg")] * 3 + [str(samples / "cat.jpg")] * 3
    for start in (0, 3):  # best first by match probability, the number printed beside each text
        probabilities = [r["probability"] for r in records[start : start + 3]]
        assert probabilities == sorted(probabilities, reverse=True)


def test_top_k_keeps_best_texts_per_image(bt, full_checkpoint, samples):
    every = bt("score", samples / "cat.jpg", *TEXTS, "-m", full_checkpoint, "-f", "json").json()
    best = bt("score", samples / "cat.jpg", *TEXTS, "-m", full_checkpoint, "-f", "json", "-k", "1").json()
    assert best == every[:1]


def test_directory_and_texts_file(bt, full_checkpoint, samples, tmp_path):
    texts = tmp_path / "captions.txt"
    texts.write_text("a cat\n\n  a rocket  \n")
    records = bt("score", samples, "--texts-file", texts, "-m", full_checkpoint, "-f", "json").json()
    assert {r["text"] for r in records} == {"a cat", "a rocket"}
    assert len({r["image"] for r in records}) == 5


def test_image_list_on_stdin(bt, full_checkpoint, samples):
    paths = f"{samples / 'cat.jpg'}\n{samples / 'coffee.jpg'}\n"
    records = bt("score", "-", "a cat", "-m", full_checkpoint, "-f", "json", input=paths).json()
    assert [r["image"] for r in records] == [str(samples / "cat.jpg"), str(samples / "coffee.jpg")]


def test_glob(bt, full_checkpoint, samples):
    records = bt("score", str(samples / "*.jpg"), "a cat", "-m", full_checkpoint, "-f", "json").json()
    assert len(records) == 4


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "table"])
def test_other_formats_carry_the_same_numbers(bt, full_checkpoint, samples, fmt):
    result = bt("score", samples / "cat.jpg", "two cats", "-m", full_checkpoint, "-f", fmt)
    assert result.code == 0
    logit = itm_logits(full_checkpoint, rgb(samples / "cat.jpg"), "two cats")[1].item()
    if fmt == "jsonl":
        import json

        assert math.isclose(json.loads(result.stdout)["logit"], logit, abs_tol=1e-5)
    elif fmt == "csv":
        header, row = result.stdout.strip().splitlines()
        assert header == "image,text,logit,probability"
        assert math.isclose(float(row.split(",")[2]), logit, abs_tol=1e-5)
    else:
        assert f"{logit:.4f}" in result.stdout and "two cats" in result.stdout


def test_checkpoint_without_itm_head_is_refused(bt, checkpoints, samples):
    result = bt("score", samples / "cat.jpg", "a cat", "-m", checkpoints["mlm"])
    assert result.code == 1
    assert "no image-text matching (ITM) head" in result.stderr
    assert "bridgetower-base-itm-mlm" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.jpg", "no such file or directory"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no image files in directory"),
    ],
)
def test_bad_image_sources_give_one_line_errors(bt, full_checkpoint, tmp_path, make, message):
    result = bt("score", make(tmp_path), "a cat", "-m", full_checkpoint)
    assert result.code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_unreadable_image_is_skipped_and_reported(bt, full_checkpoint, samples, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_text("this is not a JPEG")
    result = bt("score", broken, samples / "cat.jpg", "a cat", "-m", full_checkpoint, "-f", "json")
    assert result.code == 3
    assert [r["image"] for r in result.json()] == [str(samples / "cat.jpg")]
    assert "broken.jpg: not an image file" in result.stderr


def test_only_unreadable_image_is_an_error(bt, full_checkpoint, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n-truncated")
    result = bt("score", broken, "a cat", "-m", full_checkpoint)
    assert result.code == 1
    assert "none of the images could be read" in result.stderr
    assert "Traceback" not in result.stderr


def test_empty_text_is_an_error(bt, full_checkpoint, samples):
    result = bt("score", samples / "cat.jpg", "   ", "-m", full_checkpoint)
    assert result.code == 1 and "text 1 is empty" in result.stderr


def test_usage_errors_exit_2(bt, samples):
    assert bt("score").code == 2
    assert bt("score", samples / "cat.jpg", "a cat", "--dtype", "float64").code == 2
    assert bt("score", samples / "cat.jpg", "a cat", "--format", "xml").code == 2


def test_device_cuda_without_cuda(bt, full_checkpoint, samples):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = bt("score", samples / "cat.jpg", "a cat", "-m", full_checkpoint, "--device", "cuda")
    assert result.code == 1 and "CUDA is not available" in result.stderr


def test_two_images_under_one_name_each_get_their_records(full_checkpoint, samples):
    """The Python API may pass a path and a PIL image of another file under one name: no record is lost."""
    from conftest import DEVICE

    import bridgetower_cli as bt
    from bridgetower_cli.model.loading import load_model
    from bridgetower_cli.model.runtime import Runtime
    from bridgetower_cli.records import Outcome
    from bridgetower_cli.sources import ImageSource
    from bridgetower_cli.tasks import pairs

    runtime = Runtime(load_model(full_checkpoint, "full", DEVICE, "float32"))
    sources = [
        ImageSource("same", path=str(samples / "cat.jpg")),
        ImageSource("same", path=str(samples / "rocket.jpg")),
    ]
    records = list(pairs.score(runtime, sources, TEXTS[:2], Outcome(), batch_size=1))
    expected = {
        itm_logits(full_checkpoint, rgb(samples / name), text)[1].item() for name in ("cat.jpg", "rocket.jpg")
        for text in TEXTS[:2]
    }  # fmt: skip
    assert len(records) == 4 and all(min(abs(r.logit - e) for e in expected) <= 1e-5 for r in records)
    from PIL import Image

    model = bt.load(str(full_checkpoint), device=DEVICE, dtype="float32")
    named = [r.image for r in model.score([str(samples / "cat.jpg"), Image.open(samples / "cat.jpg")], ["a cat"])]
    assert named == [str(samples / "cat.jpg"), "image[1]"]
