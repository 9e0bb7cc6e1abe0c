"""The four public checkpoints as their hub repos hold them (files written by transformers 4.26-4.30): every
command that applies runs on each, with the numbers of the stock classes; the others are refused by head."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEVICE, PUBLISHED
from helpers import put_in_hf_cache
from reference import contrastive, itm_logits, mlm_logits, processor, rgb

from bridgetower_cli.model.hub import files_to_fetch
from bridgetower_cli.model.loading import load_model
from bridgetower_cli.model.runtime import Runtime
from bridgetower_cli.testing import build_checkpoint

WITH_ITM = [name for name, (_, heads) in PUBLISHED.items() if "itm" in heads]
ITC = "bridgetower-large-itm-mlm-itc"
TEXTS = ["two cats on a couch", "a rocket launch over the water"]
IMAGES = ["cat.jpg", "cameraman-gray.png", "rocket.jpg"]


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def test_the_layouts_are_the_published_files(published):
    for name, path in published.items():
        assert sorted(p.name for p in path.iterdir()) == [
            "config.json",
            "preprocessor_config.json",
            "pytorch_model.bin",
            "tokenizer.json",
            "vocab.json",
        ]
        config = json.loads((path / "config.json").read_text())
        assert "model_type" not in config and "architectures" not in config and config["text_config_dict"] is None
        keys = torch.load(path / "pytorch_model.bin", map_location="meta", weights_only=True)
        assert any(k.endswith("text_model.embeddings.position_ids") for k in keys)
        assert any(k.startswith("bridgetower.") for k in keys) == (name != "bridgetower-base")
    large = json.loads((published[ITC] / "preprocessor_config.json").read_text())
    assert large == {"max_text_len": 50, "size": 294, "tokenizer": "roberta-large", "vocab_size": 50265}


def test_transformers_own_processor_cannot_load_them(published):
    from transformers import BridgeTowerProcessor

    with pytest.raises((ValueError, OSError, KeyError)):
        BridgeTowerProcessor.from_pretrained(published[ITC])


@pytest.mark.parametrize("name", WITH_ITM)
def test_score_equals_stock(bt, published, samples, name):
    path = published[name]
    result = bt("score", *(samples / i for i in IMAGES), *TEXTS, "-m", path, "-f", "json", "-b", "2")
    assert result.code == 0, result.stderr
    records = result.json()
    assert len(records) == len(IMAGES) * len(TEXTS)
    for record in records:
        logits = itm_logits(path, rgb(record["image"]), record["text"])
        assert abs(record["logit"] - logits[1].item()) <= 1e-5
        assert abs(record["probability"] - logits.softmax(-1)[1].item()) <= 1e-5


@pytest.mark.parametrize("name", WITH_ITM)
def test_fill_mask_equals_stock(bt, published, samples, name):
    path = published[name]
    text = "two <mask> sitting on a <mask>"
    result = bt("fill-mask", samples / "cat.jpg", samples / "coffee.jpg", text, "-m", path, "-f", "json", "-k", "5")
    assert result.code == 0, result.stderr
    tokenizer = processor(path).tokenizer
    for record in result.json():
        logits, input_ids = mlm_logits(path, rgb(record["image"]), text)
        positions = (input_ids == tokenizer.mask_token_id).nonzero().flatten().tolist()
        assert len(positions) == len(record["masks"]) == 2
        for position, candidates in zip(positions, record["masks"]):
            probabilities = logits[position].softmax(-1)
            assert [c["token"] for c in candidates] == probabilities.topk(5).indices.tolist()
            assert max_diff([c["score"] for c in candidates], probabilities.topk(5).values) <= 1e-5


def test_embed_equals_stock(bt, published, samples):
    path = published[ITC]
    images = [samples / "cat.jpg", samples / "cameraman-gray.png"]
    for kind in ("image", "text", "cross"):
        args = [*images] if kind != "text" else []
        args += ["--text", TEXTS[0]] if kind != "image" else []
        result = bt("embed", *args, "--kind", kind, "-m", path, "-f", "json")
        assert result.code == 0, result.stderr
        records = result.json()
        assert len(records) == (1 if kind == "text" else 2)
        for record in records:
            stock = contrastive(path, rgb(record.get("image", images[0])), record.get("text", "anything"))
            expected = {"image": stock.image_embeds, "text": stock.text_embeds, "cross": stock.cross_embeds}[kind]
            assert max_diff(record["embedding"], expected[0]) <= 1e-5


@pytest.mark.parametrize("name", WITH_ITM)
def test_retrieve_and_index_equal_stock(bt, published, samples, tmp_path, name):
    path = published[name]
    index = tmp_path / "ix.sqlite"
    has_itc = "itc" in PUBLISHED[name][1]
    if has_itc:
        built = bt("index", samples, "-m", path, "--index", index, "-f", "json")
        assert built.code == 0 and built.json()[0]["new"] == 5, built.stderr
    result = bt("retrieve", TEXTS[0], samples, "-m", path, "--index", index, "-r", "5", "-f", "json")
    assert result.code == 0, result.stderr
    records = result.json()
    assert len(records) == 5
    for record in records:
        image = rgb(record["image"])
        logits = itm_logits(path, image, TEXTS[0])
        assert abs(record["logit"] - logits[1].item()) <= 1e-5
        if has_itc:
            stock = contrastive(path, image, TEXTS[0])
            assert abs(record["similarity"] - (stock.text_embeds[0] @ stock.image_embeds[0]).item()) <= 1e-5
        else:
            assert "similarity" not in record
    assert index.exists() == has_itc


@pytest.mark.parametrize(
    "name, command, head",
    [
        ("bridgetower-base", ["score", "{cat}", "a cat"], "image-text matching (ITM)"),
        ("bridgetower-base", ["fill-mask", "{cat}", "a <mask>"], "masked language modelling (MLM)"),
        ("bridgetower-base", ["embed", "{cat}"], "contrastive embedding (ITC)"),
        ("bridgetower-base", ["index", "{samples}", "--index", "{index}"], "contrastive embedding (ITC)"),
        ("bridgetower-base", ["retrieve", "a cat", "{samples}", "--index", "{index}"], "image-text matching (ITM)"),
        ("bridgetower-base-itm-mlm", ["embed", "{cat}"], "contrastive embedding (ITC)"),
        ("bridgetower-large-itm-mlm", ["index", "{samples}", "--index", "{index}"], "contrastive embedding (ITC)"),
    ],
)
def test_missing_heads_are_refused_by_name(bt, published, samples, tmp_path, name, command, head):
    args = [a.format(cat=samples / "cat.jpg", samples=samples, index=tmp_path / "ix.sqlite") for a in command]
    result = bt(*args, "-m", published[name])
    assert result.code == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert f"has no {head} head" in line and "None" not in line and "Traceback" not in line
    assert "--model BridgeTower/" in line


def test_the_image_size_comes_from_the_checkpoint(published, samples):
    for name, expected in [("bridgetower-base-itm-mlm", 64), (ITC, 294)]:
        runtime = Runtime(load_model(published[name], name, DEVICE, "float32"))
        assert runtime.image_size == expected
        assert tuple(runtime.pixel_values(rgb(samples / "coffee.jpg")).shape) == (3, expected, expected)


def test_a_config_without_model_type_that_is_not_bridgetower_is_refused(bt, published, samples, tmp_path):
    for fields, message in [
        ({"hidden_size": 768, "num_hidden_layers": 12}, "not a BridgeTower checkpoint"),
        ({"model_type": "clip", "text_config": {}, "vision_config": {}}, "is a 'clip' checkpoint"),
    ]:
        other = tmp_path / f"other-{len(message)}"
        shutil.copytree(published[ITC], other)
        (other / "config.json").write_text(json.dumps(fields))
        result = bt("score", samples / "cat.jpg", "a cat", "-m", other)
        assert result.code == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_legacy_torch_save_format_still_works(bt, samples, tmp_path):
    path = build_checkpoint(tmp_path / "legacy", "tiny", ("itm", "mlm"), seed=7, layout="published", legacy_pickle=True)
    import zipfile

    assert not zipfile.is_zipfile(path / "pytorch_model.bin")
    result = bt("score", samples / "cat.jpg", TEXTS[0], "-m", path, "-f", "json")
    assert result.code == 0, result.stderr
    (record,) = result.json()
    assert abs(record["logit"] - itm_logits(path, rgb(samples / "cat.jpg"), TEXTS[0])[1].item()) <= 1e-5


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", [["score", "{cat}", "a cat"], ["embed", "{cat}"]])
def test_a_pickle_that_runs_code_is_refused(bt, published, samples, tmp_path, command):
    evil = tmp_path / "evil"
    shutil.copytree(published[ITC], evil)
    marker = tmp_path / "pwned"
    state = torch.load(evil / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "payload": _RunsCode(marker)}, evil / "pytorch_model.bin")
    result = bt(*[a.format(cat=samples / "cat.jpg") for a in command], "-m", evil)
    assert result.code == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "refusing to load" in line and "not plain weights" in line and "system" in line
    assert not marker.exists()


def test_files_to_fetch_is_what_the_repos_hold():
    main = [".gitattributes", "README.md", "config.json", "preprocessor_config.json", "pytorch_model.bin"]
    main += ["tokenizer.json", "vocab.json"]
    assert files_to_fetch(main) == [
        "config.json",
        "preprocessor_config.json",
        "pytorch_model.bin",
        "tokenizer.json",
        "vocab.json",
    ]
    conversion = [*main, "model.safetensors"]
    assert "pytorch_model.bin" not in files_to_fetch(conversion) and "model.safetensors" in files_to_fetch(conversion)
    sharded = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    sharded += ["model.safetensors.index.json", "images/example.json"]
    assert files_to_fetch(sharded) == sharded[:4]
    assert files_to_fetch(["config.json", "README.md"]) == []


# -- the Hugging Face cache: the default hub ids, revisions ---------------------------------------------------------


def bt_process(*args, env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BT_", "HF_"))}
    return subprocess.run(
        [sys.executable, "-m", "bridgetower_cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=clean | {"BT_DEVICE": DEVICE} | env,
        timeout=300,
    )


@pytest.mark.slow
def test_default_ids_run_from_an_ordinary_hf_cache(published, samples, tmp_path):
    hub = tmp_path / "hf" / "hub"
    for name in PUBLISHED:
        put_in_hf_cache(hub, f"BridgeTower/{name}", published[name])
    # HF_HOME (the cache under it) with the hub unreachable; then HF_HUB_CACHE with HF_HUB_OFFLINE=1.
    for env in (
        {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"},
        {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"},
    ):
        scored = bt_process("score", samples / "cat.jpg", TEXTS[0], "-f", "json", env=env)
        assert scored.returncode == 0, scored.stderr
        (record,) = json.loads(scored.stdout)
        expected = itm_logits(published["bridgetower-base-itm-mlm"], rgb(samples / "cat.jpg"), TEXTS[0])
        assert abs(record["logit"] - expected[1].item()) <= 1e-5
    embedded = bt_process("embed", "--text", TEXTS[0], "-f", "json", env=env)
    assert embedded.returncode == 0, embedded.stderr
    (record,) = json.loads(embedded.stdout)
    assert record["model"] == f"BridgeTower/{ITC}"
    stock = contrastive(published[ITC], rgb(samples / "cat.jpg"), TEXTS[0]).text_embeds[0]
    assert max_diff(record["embedding"], stock) <= 1e-5
    models = json.loads(bt_process("models", "-f", "json", env=env).stdout)
    assert all(m["cached"] for m in models)


@pytest.mark.slow
def test_revision_selects_a_branch_tag_commit_or_pr(published, samples, tmp_path, checkpoints):
    hub = tmp_path / "hub"
    repo_id = "BridgeTower/bridgetower-base-itm-mlm"
    put_in_hf_cache(hub, repo_id, published["bridgetower-base-itm-mlm"])
    pr = put_in_hf_cache(hub, repo_id, checkpoints["itm_mlm"], ref="refs/pr/1")  # safetensors, other weights
    env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    args = ["score", samples / "cat.jpg", TEXTS[0], "-m", repo_id, "-f", "json"]

    def logit(*extra, **more_env) -> float:
        result = bt_process(*args, *extra, env=env | more_env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)[0]["logit"]

    image = rgb(samples / "cat.jpg")
    on_main = itm_logits(published["bridgetower-base-itm-mlm"], image, TEXTS[0])[1].item()
    on_pr = itm_logits(checkpoints["itm_mlm"], image, TEXTS[0])[1].item()
    assert abs(logit() - on_main) <= 1e-5
    assert abs(logit("--revision", "refs/pr/1") - on_pr) <= 1e-5
    assert abs(logit(BT_REVISION=pr) - on_pr) <= 1e-5
    missing = bt_process(*args, "--revision", "v9", env=env)
    assert missing.returncode == 1 and "at revision v9 is not in the local Hugging Face cache" in missing.stderr
    assert f"hf download {repo_id}" in missing.stderr and "--revision v9" in missing.stderr
