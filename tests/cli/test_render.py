"""Rendering records (every format, streaming, summaries) and the catalog's hints: the pure parts, no model."""

from __future__ import annotations

import io
import json

import pytest

from bridgetower_cli.cli.render import render, render_object
from bridgetower_cli.model.catalog import checkpoint_with, retrieval_heads
from bridgetower_cli.records import EmbeddingsWritten, RetrievalRecord, ScoreRecord

RECORDS = [ScoreRecord("a.jpg", "a cat", 1.5, 0.8), ScoreRecord("a.jpg", 'a "dog", maybe', -0.5, 0.2)]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "table"])
def test_every_format_carries_every_record(fmt):
    out = io.StringIO()
    assert render(iter(RECORDS), fmt, out) == 2
    text = out.getvalue()
    if fmt == "json":
        assert json.loads(text) == [vars(r) for r in RECORDS]
    elif fmt == "jsonl":
        assert [json.loads(line) for line in text.splitlines()] == [vars(r) for r in RECORDS]
    elif fmt == "csv":
        import csv

        rows = list(csv.DictReader(io.StringIO(text)))
        assert [row["text"] for row in rows] == ["a cat", 'a "dog", maybe'] and rows[0]["probability"] == "0.8"
    else:
        assert "a cat" in text and "0.8000" in text and "a.jpg" in text


def test_streamed_formats_write_each_record_as_it_arrives():
    out = io.StringIO()
    seen = []

    def records():
        for record in RECORDS:
            yield record
            seen.append(out.getvalue().count("\n"))

    render(records(), "jsonl", out)
    assert seen == [1, 2]


def test_json_waits_and_omits_missing_fields():
    out = io.StringIO()
    render([RetrievalRecord(1, "a.jpg", None, 0.5)], "json", out)
    assert json.loads(out.getvalue()) == [{"rank": 1, "image": "a.jpg", "similarity": 0.5}]


def test_paths_one_per_record_or_nul_separated():
    records = [RetrievalRecord(1, "my photos/a.jpg", None, 0.5), RetrievalRecord(2, None, "a text", 0.1)]
    out = io.StringIO()
    render(records, "paths", out)
    assert out.getvalue() == "my photos/a.jpg\na text\n"
    out = io.StringIO()
    render(records, "paths", out, separator="\0")
    assert out.getvalue() == "my photos/a.jpg\0a text\0"


def test_a_summary_is_one_json_object():
    out = io.StringIO()
    render_object(EmbeddingsWritten("x.npz", 5, 32, "m"), "json", out)
    assert json.loads(out.getvalue()) == {"output": "x.npz", "count": 5, "dim": 32, "model": "m"}


def test_catalog_hints_and_retrieval_heads():
    assert checkpoint_with("itm") == "BridgeTower/bridgetower-base-itm-mlm"
    assert checkpoint_with("itm", "itc") == "BridgeTower/bridgetower-large-itm-mlm-itc"
    assert retrieval_heads(0) == (("itc",), ("itc",))
    assert retrieval_heads(5)[0] == ("itm",)
