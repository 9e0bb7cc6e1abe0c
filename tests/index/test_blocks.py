"""Integrity that covers what a query ranks, not only what it returns (issue 32): every block of the vectors a
ranking reads is checked against its checksum first. Damage that lowers a row's score (so that it is never returned,
never checked) gave another top-5 with exit 0; now the query fails in one line (float32) or ranks from the exact
file (the float16 copy is only a cache)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bridgetower_cli.errors import IndexDamaged
from bridgetower_cli.index import search
from bridgetower_cli.index.files import FileState
from bridgetower_cli.index.store import EmbeddingIndex

DIM = 8


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIM)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def filled(path: Path, count: int) -> tuple[EmbeddingIndex, list[FileState]]:
    index = EmbeddingIndex.for_writing(path, "fp", DIM)
    files = [FileState(f"/photos/{k:05d}.jpg", k, k) for k in range(count)]
    for start in range(0, count, 500):  # (several appends: blocks recorded as they fill)
        index.store([(f, f"h{k}", unit(k).tolist()) for k, f in enumerate(files) if start <= k < start + 500], [])
    return index, files


def exact_top(files, query, k):
    scores = {f.path: float(unit(n) @ query) for n, f in enumerate(files)}
    return sorted(scores, key=lambda p: -scores[p])[:k]


def lower(path: Path, row: int, dim: int, itemsize: int, header: int = 64, whole: bool = False) -> None:
    """Negate the largest component of ``row`` in a vector file (``whole``: every component): its score against
    itself falls far."""
    dtype = np.float32 if itemsize == 4 else np.float16
    data = np.memmap(path, dtype=dtype, mode="r+", offset=header, shape=(row + 1, dim))
    largest = slice(None) if whole else int(np.argmax(np.abs(data[row])))
    data[row, largest] = -data[row, largest]
    data.flush()
    del data


def test_a_lowered_row_fails_the_query_instead_of_leaving_the_ranking(tmp_path):
    index, files = filled(tmp_path / "ix.sqlite", 3000)
    query = unit(1234)
    assert index.search(query, 5, folders=[Path("/photos")])[0] == exact_top(files, query, 5)
    lower(index.vectors().path, 1234, DIM, 4)  # the true best hit, lowered
    with pytest.raises(IndexDamaged, match="do not match their checksums"):
        EmbeddingIndex.for_reading(tmp_path / "ix.sqlite").search(query, 5, folders=[Path("/photos")])


def test_a_damaged_float16_copy_is_passed_over_and_the_ranking_is_exact(tmp_path, monkeypatch):
    pytest.importorskip("torch")  # (the float16 first pass runs where torch is loaded)
    monkeypatch.setattr(search, "HALF_FROM", 1000)
    index, files = filled(tmp_path / "ix.sqlite", 3000)
    query = unit(77)
    lower(Path(f"{index.vectors().path}.f16"), 77, DIM, 2)
    found, _ = EmbeddingIndex.for_reading(tmp_path / "ix.sqlite").search(query, 5, folders=[Path("/photos")])
    assert found == exact_top(files, query, 5)


def test_a_repair_mends_what_the_blocks_found(tmp_path):
    """The damaged row embedded again (here: stored again) and its block checked again: the query answers."""
    index, files = filled(tmp_path / "ix.sqlite", 3000)
    lower(index.vectors().path, 42, DIM, 4)
    report = index.verify()
    assert report.damaged_paths == ["/photos/00042.jpg"]
    index.forget(report.damaged_paths)
    index.store([(files[42], "h42", unit(42).tolist())], [])
    query = unit(42)
    assert index.search(query, 5, folders=[Path("/photos")])[0] == exact_top(files, query, 5)


def test_with_the_float16_pass_a_lowered_float32_row_among_the_candidates_fails_the_query(tmp_path, monkeypatch):
    """The float16 copy sound, the true best hit's float32 row lowered: the float32 blocks are not read whole on this
    path, and the rows rescored (the candidates the sound copy picked) are checked by their CRC-32."""
    pytest.importorskip("torch")
    monkeypatch.setattr(search, "HALF_FROM", 1000)
    index, files = filled(tmp_path / "ix.sqlite", 3000)
    lower(index.vectors().path, 1234, DIM, 4, whole=True)  # (its exact score -1: rescored out of the top 5)
    with pytest.raises(IndexDamaged, match="do not match their checksums"):
        EmbeddingIndex.for_reading(tmp_path / "ix.sqlite").search(unit(1234), 5, folders=[Path("/photos")])
