"""The index's store over a real SQLite file and vector file, no model: planning, models, compaction, torn rows,
stats, exact search."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bridgetower_cli.errors import BtError
from bridgetower_cli.index.files import FileState, file_state
from bridgetower_cli.index.store import EmbeddingIndex

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
    assert plan.to_embed == [changed] and plan.changed == {changed.path} and plan.to_drop == [files[1].path]
    paths, matrix = index.embeddings([files[1].path, files[0].path, "/elsewhere.jpg"])
    assert paths == [files[1].path, files[0].path]
    assert np.allclose(matrix, np.asarray([unit(4, 1), unit(4, 0)], dtype=np.float32))


def test_index_refuses_another_checkpoint(tmp_path):
    EmbeddingIndex.for_writing(tmp_path / "ix.sqlite", "one", 4, label="first").close()
    with pytest.raises(BtError, match=r"was built with another model or dtype \(first\)"):
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
