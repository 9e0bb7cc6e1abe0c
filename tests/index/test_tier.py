"""The approximate tier of a large index (issue 34), at small sizes: where recall is 1 by construction its answers
are exact search's; rows added after a build are found; a damaged tier is detected, passed over and rebuilt; a kill
during a build leaves a usable index; --exact, --stats, --check and --rebuild know it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bridgetower_cli.index import tier as tiers
from bridgetower_cli.index.files import FileState
from bridgetower_cli.index.store import EmbeddingIndex

pytest.importorskip("faiss")
DIM, ROWS, CENTRES = 64, 3000, 60
PHOTOS = [Path("/photos")]  # (what a search covers)


def clustered(count: int, seed: int) -> np.ndarray:
    """Unit vectors around ``CENTRES`` centres (as embeddings of a photo library cluster)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((CENTRES, DIM)).astype(np.float32)
    rows = centres[rng.integers(0, CENTRES, count)] + 0.15 * rng.standard_normal((count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def filled(path: Path, count: int = ROWS, tier_from: int = 1000) -> tuple[EmbeddingIndex, np.ndarray]:
    index = EmbeddingIndex.for_writing(path, "fp", DIM)
    index.set_tier_from(tier_from)
    vectors = clustered(count, 1)
    for start in range(0, count, 1000):
        chunk = range(start, min(count, start + 1000))
        index.store([(FileState(f"/photos/{k:05d}.jpg", 1, 1), f"h{k}", vectors[k]) for k in chunk], [])
    return index, vectors


def exact(vectors: np.ndarray, query: np.ndarray, k: int) -> list[str]:
    scores = vectors @ query
    return [f"/photos/{k:05d}.jpg" for k in np.argsort(-scores, kind="stable")[:k]]


@pytest.fixture
def every_row(monkeypatch):
    """A tier whose recall is 1 by construction: every row a candidate."""
    monkeypatch.setattr(tiers, "CANDIDATES", (ROWS + 1000,))


def test_where_recall_is_one_by_construction_the_tier_answers_as_exact_search(tmp_path, every_row):
    index, vectors = filled(tmp_path / "ix.sqlite")
    with index:
        assert index.tier_wanted() and index.build_tier() is not None and not index.tier_wanted()
        for seed in range(5):
            query = clustered(1, 100 + seed)[0]
            found, similarities = index.search(query, 20, PHOTOS)
            assert found == exact(vectors, query, 20)
            assert np.allclose(similarities, np.sort(vectors @ query)[::-1][:20], atol=1e-6)
            assert index.search(query, 20, PHOTOS, exact=True)[0] == found


def test_the_tier_is_used_and_measured_and_the_float16_copy_it_replaces_is_gone(tmp_path):
    index, vectors = filled(tmp_path / "ix.sqlite")
    with index:
        made = index.build_tier()
        stats = index.stats()
        assert stats.tier == made.spec and stats.tier_rows == ROWS and stats.tier_bytes > 0 and stats.tier_from == 1000
        assert stats.tier_recall >= tiers.RECALL and stats.tier_build_s is not None
        assert stats.tier_candidates == tiers.CANDIDATES[0] and stats.tier_used  # (clustered: the fewest reach it)
        assert not Path(f"{index.path}.vectors-0.f16").exists()  # (the tier is the first pass now)
        assert index.verify().sound  # (the copy's absence is not damage)
        query = clustered(1, 7)[0]
        assert index.search(query, 10, PHOTOS)[0][:5] == exact(vectors, query, 5)


def test_a_tier_of_near_duplicates_rescores_as_many_candidates_as_its_recall_needs(tmp_path):
    """Three photos, each in 1,000 near-identical copies: 4-bit codes cannot order a copy's neighbours, so the build
    measures that the fewest candidates miss and takes more, until held-out queries find their exact top 10."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((3, DIM)).astype(np.float32)
    vectors = centres[np.arange(ROWS) % 3] + 0.01 * rng.standard_normal((ROWS, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = EmbeddingIndex.for_writing(tmp_path / "ix.sqlite", "fp", DIM)
    index.set_tier_from(1000)
    index.store([(FileState(f"/photos/{k:05d}.jpg", 1, 1), f"h{k}", vectors[k]) for k in range(ROWS)], [])
    with index:
        made = index.build_tier()
        assert made.candidates > tiers.CANDIDATES[0] and made.recall >= tiers.RECALL
        query = vectors[5] + 0.01 * rng.standard_normal(DIM).astype(np.float32)
        query /= np.linalg.norm(query)
        assert index.search(query, 10, PHOTOS)[0] == exact(vectors, query, 10)


def test_a_tier_that_cannot_find_the_neighbours_is_not_used(tmp_path, monkeypatch):
    """A tier whose recall falls short at its build (here by construction: 8 candidates cannot hold a top 10; in
    life, rows that are one photo and noise) is kept, not built again until the rows grow, and not used: searches
    are exact, the float16 copy stays, --stats says so."""
    monkeypatch.setattr(tiers, "CANDIDATES", (8,))
    index, vectors = filled(tmp_path / "ix.sqlite")
    with index:
        made = index.build_tier()
        assert made.recall <= 0.8 and not index.tier_wanted()
        assert not index.stats().tier_used and index.stats().tier == made.spec
        assert Path(f"{index.path}.vectors-0.f16").exists() and index.verify().sound
        monkeypatch.setattr(tiers, "candidates", None)  # (a search that asked the tier would fail)
        for seed in range(3):
            query = clustered(1, 50 + seed)[0]
            assert index.search(query, 5, PHOTOS)[0] == exact(vectors, query, 5)


def test_rows_added_after_a_build_are_found(tmp_path):
    index, vectors = filled(tmp_path / "ix.sqlite")
    with index:
        index.build_tier()
        query = clustered(1, 9)[0]
        index.store([(FileState("/photos/new.jpg", 1, 1), "hnew", query)], [])  # (the query itself: the best)
        assert not index.tier_wanted()  # (one row is not a tenth of the tier)
        found, similarities = index.search(query, 3, PHOTOS)
        assert found[0] == "/photos/new.jpg" and similarities[0] == pytest.approx(1.0, abs=1e-6)


def test_a_damaged_tier_is_detected_passed_over_and_rebuilt(tmp_path, every_row):
    index, vectors = filled(tmp_path / "ix.sqlite")
    with index:
        made = index.build_tier()
        file = tmp_path / made.file
        data = bytearray(file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        file.write_bytes(bytes(data))
        os.utime(file, ns=(1, 1))  # (another state of the file: this process reads it again)
        report = index.verify()
        assert report.repair == "tier" and "does not match its checksum" in report.vector_file
        query = clustered(1, 11)[0]
        assert index.search(query, 10, PHOTOS)[0] == exact(vectors, query, 10)  # (exact meanwhile: never wrong)
        assert index.tier_wanted()
        rebuilt = index.build_tier()
        assert rebuilt.file != made.file and not file.exists() and index.verify().sound


KILLED_BUILD = """
import os, signal, sys
from bridgetower_cli.index.store import EmbeddingIndex
with EmbeddingIndex.for_writing(sys.argv[1], "fp", int(sys.argv[2])) as index:
    index.build_tier(pause=lambda step: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_a_kill_during_a_build_leaves_a_usable_index_and_its_file_is_removed_later(tmp_path):
    index, vectors = filled(tmp_path / "ix.sqlite")
    index.close()
    done = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(index.path), str(DIM)], timeout=300)
    assert done.returncode == -signal.SIGKILL
    (leftover,) = tiers.files_of(index.path)  # (written, never published)
    with EmbeddingIndex.for_reading(index.path) as reader:
        query = clustered(1, 13)[0]
        assert reader.tier() is None and reader.search(query, 10, PHOTOS)[0] == exact(vectors, query, 10)
    with EmbeddingIndex.for_writing(index.path, "fp", DIM) as writer:
        made = writer.build_tier()
        assert [p.name for p in tiers.files_of(index.path)] == [made.file] and not leftover.exists()


def test_a_compaction_makes_the_tier_wanted_again_and_a_rebuild_removes_it(tmp_path):
    index, _ = filled(tmp_path / "ix.sqlite")
    with index:
        index.build_tier()
        index.compact()
        assert index.tier_wanted() and index.search(clustered(1, 3)[0], 5, PHOTOS)[0]  # (stale: exact until rebuilt)
    with EmbeddingIndex.for_writing(index.path, "fp", DIM, rebuild=True) as fresh:
        assert fresh.tier() is None and tiers.files_of(index.path) == [] and fresh.count() == 0


def test_below_its_size_or_with_tier_from_zero_an_index_has_no_tier(tmp_path):
    index, _ = filled(tmp_path / "ix.sqlite", count=900)
    with index:
        assert not index.tier_wanted()
        index.set_tier_from(0)
        index.store([(FileState(f"/more/{k}.jpg", 1, 1), f"m{k}", v) for k, v in enumerate(clustered(200, 5))], [])
        assert not index.tier_wanted()


def test_too_few_rows_never_build_one_whatever_tier_from_says(tmp_path):
    index, _ = filled(tmp_path / "ix.sqlite", count=tiers.MIN_ROWS - 1, tier_from=1)
    with index:
        assert not index.tier_wanted()


def test_without_faiss_an_index_searches_exactly_and_builds_no_tier(tmp_path, monkeypatch):
    index, vectors = filled(tmp_path / "ix.sqlite")
    with index:
        index.build_tier()
        monkeypatch.setattr(tiers, "available", lambda: False)  # (installed without the [tier] extra)
        query = clustered(1, 17)[0]
        assert not index.tier_wanted() and index._usable_tier(0, ROWS) is None
        assert index.search(query, 10, PHOTOS)[0] == exact(vectors, query, 10) and index.verify().sound
