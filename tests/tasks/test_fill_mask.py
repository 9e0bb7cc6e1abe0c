"""`bt fill-mask`: probabilities and fills equal the stock BridgeTowerForMaskedLM."""

from __future__ import annotations

import pytest
from reference import mlm_logits, processor, rgb

TEXTS = ["a <mask> looking out of the window", "two <mask> sitting on a <mask> near the <mask>"]


def test_probabilities_and_sequence_equal_stock(bt, full_checkpoint, samples):
    images = [samples / "cat.jpg", samples / "cameraman-gray.png"]
    result = bt("fill-mask", *images, *TEXTS, "-m", full_checkpoint, "-f", "json", "-k", "4")
    assert result.code == 0, result.stderr
    records = result.json()
    assert len(records) == 4
    tokenizer = processor(full_checkpoint).tokenizer
    for record in records:
        logits, input_ids = mlm_logits(full_checkpoint, rgb(record["image"]), record["text"])
        positions = (input_ids == tokenizer.mask_token_id).nonzero().flatten().tolist()
        assert len(record["masks"]) == len(positions) == record["text"].count("<mask>")
        for position, candidates in zip(positions, record["masks"]):
            probabilities = logits[position].softmax(-1)
            expected = probabilities.topk(4)
            assert [c["token"] for c in candidates] == expected.indices.tolist()
            for candidate in candidates:
                assert abs(candidate["score"] - probabilities[candidate["token"]].item()) <= 1e-5
                assert candidate["token_str"] == tokenizer.decode([candidate["token"]]).strip()
        # The documented decode of the argmax, at the mask positions (special tokens and stray spaces dropped).
        filled = input_ids.clone()
        filled[positions] = logits.argmax(-1)[positions]
        assert record["sequence"] == " ".join(tokenizer.decode(filled, skip_special_tokens=True).split())
        assert "<s>" not in record["sequence"] and "  " not in record["sequence"]


def test_batching_texts_of_different_lengths_changes_nothing(bt, full_checkpoint, samples):
    texts = [*TEXTS, "<mask>", "a very long caption about a <mask> that goes on and on near the launch pad at dawn"]
    one = bt("fill-mask", samples / "rocket.jpg", *texts, "-m", full_checkpoint, "-f", "json", "-b", "1").json()
    many = bt("fill-mask", samples / "rocket.jpg", *texts, "-m", full_checkpoint, "-f", "json", "-b", "4").json()
    assert [r["sequence"] for r in one] == [r["sequence"] for r in many]
    for a, b in zip(one, many):
        for mask_a, mask_b in zip(a["masks"], b["masks"]):
            assert [c["token"] for c in mask_a] == [c["token"] for c in mask_b]
            assert max(abs(x["score"] - y["score"]) for x, y in zip(mask_a, mask_b)) <= 1e-5


def test_targets_restrict_the_candidates(bt, full_checkpoint, samples):
    result = bt(
        "fill-mask", samples / "cat.jpg", "a <mask> on a couch", "-m", full_checkpoint, "--targets", "cat,dog,rocket"
    )
    (record,) = result.json()
    tokenizer = processor(full_checkpoint).tokenizer
    allowed = {tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("cat", "dog", "rocket")}
    (candidates,) = record["masks"]
    assert {c["token"] for c in candidates} == allowed
    logits, input_ids = mlm_logits(full_checkpoint, rgb(samples / "cat.jpg"), "a <mask> on a couch")
    position = (input_ids == tokenizer.mask_token_id).nonzero().item()
    for candidate in candidates:
        assert abs(candidate["score"] - logits[position].softmax(-1)[candidate["token"]].item()) <= 1e-5
    assert [c["score"] for c in candidates] == sorted((c["score"] for c in candidates), reverse=True)
    assert record["sequence"] == f"a {candidates[0]['token_str']} on a couch"


@pytest.mark.parametrize(
    "text, message", [("a cat on a couch", "no <mask> in it"), ("a [MASK] on a couch", "write <mask>")]
)
def test_texts_without_mask_are_refused(bt, full_checkpoint, samples, text, message):
    result = bt("fill-mask", samples / "cat.jpg", text, "-m", full_checkpoint)
    assert result.code == 1 and message in result.stderr and result.stdout == ""


def test_ten_masks(bt, full_checkpoint, samples):
    text = " ".join(["<mask>"] * 10)
    (record,) = bt("fill-mask", samples / "cat.jpg", text, "-m", full_checkpoint, "-f", "json", "-k", "1").json()
    assert len(record["masks"]) == 10


def test_table_shows_candidates(bt, full_checkpoint, samples):
    args = ["fill-mask", samples / "cat.jpg", "a <mask> on a couch", "-m", full_checkpoint, "-k", "3"]
    table = bt(*args, "-f", "table").stdout
    (record,) = bt(*args, "-f", "json").json()
    assert record["sequence"] in table and "probability" in table
    assert all(f"{c['score']:.4f}" in table for c in record["masks"][0])


def test_checkpoint_without_mlm_is_refused(bt, tmp_path, samples):
    from bridgetower_cli.testing import build_checkpoint

    path = build_checkpoint(tmp_path / "itm", "tiny", ("itm",))
    result = bt("fill-mask", samples / "cat.jpg", "a <mask>", "-m", path)
    assert result.code == 1 and "masked language modelling (MLM)" in result.stderr
