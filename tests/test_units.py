"""The fast layer: the pure parts (output formats, index planning, ranking helpers, the catalog) with no model."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from bridgetower_cli.cli.render import render, render_object
from bridgetower_cli.errors import BtError
from bridgetower_cli.index.files import FileState, file_state
from bridgetower_cli.index.store import EmbeddingIndex
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


# -- index planning (a real SQLite file, no model) -----------------------------------------------------------------


def unit(dim: int, seed: int) -> list[float]:
    vector = np.random.default_rng(seed).normal(size=dim)
    return (vector / np.linalg.norm(vector)).tolist()


def test_index_plans_new_changed_unchanged_and_gone(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    files = []
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (folder / name).write_bytes(name.encode())
        files.append(file_state(str(folder / name)))
    index = EmbeddingIndex.for_writing(tmp_path / "ix.sqlite", "fp", 4)
    index.store([(files[0], "h0", unit(4, 0)), (files[1], "h1", unit(4, 1))], [(files[2], "damaged")])
    plan = index.plan(files, [folder])
    assert plan.to_embed == [] and plan.unchanged == 3 and plan.to_drop == []
    changed = FileState(files[0].path, files[0].size, files[0].mtime_ns + 1)
    os.unlink(files[1].path)
    plan = index.plan([changed, files[2]], [folder])
    assert plan.to_embed == [changed] and plan.changed == 1 and plan.to_drop == [files[1].path]
    paths, matrix = index.embeddings([files[1].path, files[0].path, "/elsewhere.jpg"])
    assert paths == [files[1].path, files[0].path]
    assert np.allclose(matrix, np.asarray([unit(4, 1), unit(4, 0)], dtype=np.float32))


def test_index_refuses_another_checkpoint(tmp_path):
    EmbeddingIndex.for_writing(tmp_path / "ix.sqlite", "one", 4, label="first").close()
    with pytest.raises(BtError, match=r"was built with another model \(first\)"):
        EmbeddingIndex.for_writing(tmp_path / "ix.sqlite", "two", 4, label="second")


def test_the_vector_file_is_compacted_into_a_new_generation(tmp_path):
    index = EmbeddingIndex.for_writing(tmp_path / "ix.sqlite", "fp", 4)
    files = [FileState(f"/photos/{k}.jpg", k, k) for k in range(3000)]
    index.store([(f, f"h{k}", unit(4, k)) for k, f in enumerate(files)], [])
    index.drop([f.path for f in files[:2000]])  # two thirds of the rows unreferenced
    first = index.vectors().path
    index.maintain()
    assert index.vectors().path != first and not first.exists()
    assert index.stats().vector_rows == 1000
    paths, matrix = index.embeddings([f.path for f in files[2000:]])
    assert np.array_equal(matrix, np.asarray([unit(4, k) for k in range(2000, 3000)], dtype=np.float32))


def test_a_torn_vector_row_is_never_read(tmp_path):
    index = EmbeddingIndex.for_writing(tmp_path / "ix.sqlite", "fp", 4)
    a, b = FileState("/a.jpg", 1, 1), FileState("/b.jpg", 2, 2)
    index.store([(a, "ha", unit(4, 1))], [])
    with open(index.vectors().path, "ab") as file:  # a crash mid-append: half a row, never committed
        file.write(b"\x00" * 6)
    index.store([(b, "hb", unit(4, 2))], [])
    paths, matrix = index.embeddings(["/a.jpg", "/b.jpg"])
    assert np.array_equal(matrix, np.asarray([unit(4, 1), unit(4, 2)], dtype=np.float32))


def test_stats_and_prune(tmp_path):
    index = EmbeddingIndex.for_writing(tmp_path / "ix.sqlite", "fp", 4, label="tiny")
    real = tmp_path / "real.jpg"
    real.write_bytes(b"x")
    index.store([(file_state(str(real)), "h", unit(4, 0)), (FileState("/gone.jpg", 1, 1), "g", unit(4, 1))], [])
    stats = index.stats()
    assert (stats.images, stats.model, stats.dim, stats.vector_bytes) == (2, "tiny", 4, 64 + 32)
    assert stats.last_refresh is not None
    assert index.prune() == 1 and index.count() == 1


def test_search_is_exact_top_k_within_the_folders_and_files_named(tmp_path):
    index = EmbeddingIndex.for_writing(tmp_path / "ix.sqlite", "fp", 8)
    files = [FileState(f"/lib/{'a' if k % 2 else 'b'}/{k:04d}.jpg", k, k) for k in range(600)]
    vectors = np.asarray([unit(8, k) for k in range(600)], dtype=np.float32)
    index.store([(f, f"h{k}", v) for k, (f, v) in enumerate(zip(files, vectors))], [])
    index.drop([f.path for f in files[:100]])  # unreferenced (garbage) rows in the vector file
    index.link([(FileState("/elsewhere/copy.jpg", 1, 1), "h300")])  # a second path on one slot
    query = np.asarray(unit(8, 9999), dtype=np.float32)
    paths, similarities = index.search(query, 25, folders=[Path("/lib/a")], files=["/elsewhere/copy.jpg"])
    allowed = {f.path: vectors[k] @ query for k, f in enumerate(files) if k >= 100 and f.path.startswith("/lib/a/")}
    allowed["/elsewhere/copy.jpg"] = vectors[300] @ query
    expected = sorted(allowed, key=lambda p: -allowed[p])[:25]
    assert paths == expected
    assert np.allclose(similarities, [allowed[p] for p in expected], atol=1e-6)
