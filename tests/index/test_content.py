"""The index binds a row's content hash to the bytes it embedded (issue 32): a photo replaced while `bt index` runs
(after its hash was taken, before it was read to embed) was embedded from its new content under the old hash, and a
copy of the original indexed later was linked to that vector, exit 0, `--check` clean."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest

from bridgetower_cli.index.files import bytes_hash
from bridgetower_cli.index.store import EmbeddingIndex

pytestmark = pytest.mark.slow


def test_a_photo_replaced_mid_index_is_indexed_as_what_was_embedded(
    bt, full_checkpoint, samples, tmp_path, monkeypatch
):
    from bridgetower_cli.tasks import indexing

    photos, later = tmp_path / "photos", tmp_path / "later"
    photos.mkdir()
    later.mkdir()
    shutil.copy(samples / "cat.jpg", photos / "photo.jpg")
    real_hash = indexing.content_hash

    def hashed_then_replaced(path):  # (the photo is replaced right after its hash is taken)
        digest = real_hash(path)
        shutil.copy(samples / "rocket.jpg", path)
        return digest

    monkeypatch.setattr(indexing, "content_hash", hashed_then_replaced)
    index = tmp_path / "ix.sqlite"
    assert bt("index", photos, "-m", full_checkpoint, "--index", index, "-f", "json").code == 0
    monkeypatch.undo()
    with sqlite3.connect(index) as db:
        (stored,) = db.execute("SELECT hash FROM images").fetchone()
    assert stored == bytes_hash((samples / "rocket.jpg").read_bytes())  # the bytes it embedded
    shutil.copy(samples / "cat.jpg", later / "original.jpg")  # a copy of the original, indexed later
    assert bt("index", later, "-m", full_checkpoint, "--index", index, "-f", "json").code == 0
    fresh = tmp_path / "fresh.sqlite"
    assert bt("index", later, "-m", full_checkpoint, "--index", fresh, "-f", "json").code == 0
    original = str(later / "original.jpg")
    with EmbeddingIndex.for_reading(index) as linked, EmbeddingIndex.for_reading(fresh) as truth:
        assert np.allclose(linked.embeddings([original])[1], truth.embeddings([original])[1], atol=1e-6)
