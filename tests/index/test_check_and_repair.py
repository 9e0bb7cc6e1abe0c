"""`bt index --check` and `--repair` on a real index, and what `retrieve` and `--stats` say about a damaged, busy
or locked one (issue 19)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from reference import contrastive, rgb


@pytest.fixture
def photos(tmp_path) -> Path:
    """Twelve distinct small photos (random pixels: nothing shared by content)."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{k:02d}.png")
    return folder


def vector_file(index: Path) -> Path:
    (found,) = [p for p in index.parent.iterdir() if p.name.startswith(index.name + ".vectors-") and p.suffix != ".f16"]
    return found


def test_damage_is_named_and_repaired_exactly(bt, full_checkpoint, photos, tmp_path):
    index = tmp_path / "ix.sqlite"
    model = ["-m", full_checkpoint, "--index", index]
    assert bt("index", photos, *model).code == 0
    assert bt("index", "--check", "--index", index, "-f", "json").code == 0
    with open(vector_file(index), "r+b") as file:  # rows 3 to 6 overwritten by random bytes
        file.seek(64 + 3 * 32 * 4)
        file.write(np.random.default_rng(2).bytes(4 * 32 * 4))
    query = bt("retrieve", "a photo", photos, *model, "-n", "-k", "12", "--no-rerank")
    assert (
        query.code == 1
        and "is damaged" in query.stderr
        and "--repair" in query.stderr
        and "Traceback" not in query.stderr
    )
    check = bt("index", "--check", "--index", index, "-f", "json")
    assert check.code == 1 and check.json()["damaged"] == 4 and len(check.json()["damaged_paths"]) == 4
    repaired = bt("index", "--repair", *model, "-f", "json")
    assert repaired.code == 0, repaired.stderr
    assert repaired.json()["damaged"] == 0 and "repaired: index: 4 new" in repaired.stderr
    records = bt("retrieve", "a photo", photos, *model, "-n", "-k", "12", "--no-rerank", "-f", "json").json()
    for record in records:  # every similarity is the stock model's again
        stock = contrastive(full_checkpoint, rgb(record["image"]), "a photo")
        assert abs(record["similarity"] - (stock.text_embeds[0] @ stock.image_embeds[0]).item()) <= 1e-5


def test_a_missing_vector_file_is_re_embedded_whole(bt, full_checkpoint, photos, tmp_path):
    index = tmp_path / "ix.sqlite"
    assert bt("index", photos, "-m", full_checkpoint, "--index", index).code == 0
    vector_file(index).unlink()
    stats = bt("index", "--stats", "--index", index, "-f", "json")
    assert stats.code == 1 and "is damaged" in stats.stderr and "missing" in stats.stderr
    assert stats.json()["images"] == 12  # the stats still show, then the damage is said
    repaired = bt("index", "--repair", "-m", full_checkpoint, "--index", index, "-f", "json")
    assert repaired.code == 0 and repaired.json()["damaged"] == 0, repaired.stderr
    assert bt("index", "--check", "--index", index).code == 0


def test_one_repair_of_a_cut_vector_file_keeps_every_good_row(bt, full_checkpoint, photos, tmp_path):
    """Issue 32: the vector file cut by one byte (its last row incomplete). One --repair re-embeds that row and keeps
    the 11 good ones (it started an empty generation, so the good rows pointed past its end: "11 rows damaged")."""
    index = tmp_path / "ix.sqlite"
    model = ["-m", full_checkpoint, "--index", index]
    assert bt("index", photos, *model).code == 0
    before = bt("retrieve", "a photo", photos, *model, "-n", "-k", "12", "--no-rerank", "-f", "json").json()
    with open(vector_file(index), "r+b") as file:
        file.truncate(file.seek(0, 2) - 1)
    repaired = bt("index", "--repair", *model, "-f", "json")
    assert repaired.code == 0 and repaired.json()["damaged"] == 0, (repaired.stdout, repaired.stderr)
    assert "repaired: index: 1 new" in repaired.stderr, repaired.stderr
    after = bt("retrieve", "a photo", photos, *model, "-n", "-k", "12", "--no-rerank", "-f", "json").json()
    assert [r["image"] for r in after] == [r["image"] for r in before]  # (the one row embedded again: within 1e-5)
    assert all(abs(a["similarity"] - b["similarity"]) <= 1e-5 for a, b in zip(after, before))
    assert len([p for p in tmp_path.iterdir() if ".vectors-" in p.name]) == 2  # one generation and its copy


def test_queries_and_stats_do_not_wait_for_a_writer_and_a_refresh_says_busy(bt, full_checkpoint, photos, tmp_path):
    index = tmp_path / "ix.sqlite"
    model = ["-m", full_checkpoint, "--index", index]
    assert bt("index", photos, *model).code == 0
    holder = sqlite3.connect(index, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        query = bt("retrieve", "a photo", photos, *model, "-n", "--no-rerank", "-f", "json")
        assert query.code == 0 and len(query.json()) == 10
        assert bt("index", "--stats", "--index", index, "-f", "json").json()["images"] == 12
        refresh = bt("retrieve", "a photo", photos, *model, "--no-rerank", "--wait", "0.5")
        assert refresh.code == 1 and "is busy" in refresh.stderr
        assert "corrupt" not in refresh.stderr and "damaged" not in refresh.stderr and "--rebuild" not in refresh.stderr
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_stats_of_an_empty_index_show_last_refresh_as_null_and_it_moves(bt, full_checkpoint, photos, tmp_path):
    index = tmp_path / "ix.sqlite"
    one = photos / "00.png"
    assert bt("index", one, "-m", full_checkpoint, "--index", index).code == 0
    with sqlite3.connect(index) as db:
        db.execute("DELETE FROM meta WHERE key = 'refreshed_at'")
    stats = bt("index", "--stats", "--index", index, "-f", "json").json()
    assert "last_refresh" in stats and stats["last_refresh"] is None
    assert bt("index", photos, "-m", full_checkpoint, "--index", index).code == 0
    assert bt("index", "--stats", "--index", index, "-f", "json").json()["last_refresh"] is not None


def test_check_and_repair_are_library_operations_through_the_api_and_a_server(bt, full_checkpoint, photos, tmp_path):
    """The same check from the Python API and a server's /v1/index/check (a keyless loopback server: one of its
    indexes by name; no model loads for a check), and the API's repair mends it exactly."""
    pytest.importorskip("fastapi")
    from conftest import DEVICE
    from fastapi.testclient import TestClient

    import bridgetower_cli as bt_api
    from bridgetower_cli.server import Settings, create_app

    served = tmp_path / "indexes"
    index = served / "photos.sqlite"
    assert bt("index", photos, "-m", full_checkpoint, "--index", index).code == 0
    with open(vector_file(index), "r+b") as file:  # rows 1 and 2 overwritten
        file.seek(64 + 1 * 32 * 4)
        file.write(np.random.default_rng(3).bytes(2 * 32 * 4))
    model = bt_api.load(str(full_checkpoint), device=DEVICE)
    found = model.check_index(index)
    assert (found.damaged, found.repair, found.sound) == (2, "re-embed", False)
    settings = Settings(models=[], device=DEVICE, allow_paths=[photos.resolve()], index_dir=served)
    app = create_app(settings)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        answer = client.post("/v1/index/check", json={"index": "photos"})  # (the default model: never loaded)
        assert answer.status_code == 200, answer.text
        (record,) = answer.json()["records"]
        assert record == found.to_dict() and app.state.pool.loaded() == []  # (checked without loading a model)
    mended = model.check_index(index, repair=True)
    assert mended.sound and mended.repair == "none" and model.check_index(index).sound


def test_garbage_in_the_catalog_is_said_with_the_repair_that_mends_it(bt, tmp_path):
    """Issue 32: SQLite garbage mid-file ended --check and --repair in "unexpected DatabaseError"."""
    import os

    from bridgetower_cli.index.files import FileState
    from bridgetower_cli.index.store import EmbeddingIndex

    index = tmp_path / "ix.sqlite"
    with EmbeddingIndex.for_writing(index, "fp", 8) as opened:
        rng = np.random.default_rng(0)
        rows = rng.normal(size=(5000, 8)).astype(np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        opened.store([(FileState(f"/p/{k:05d}.jpg", k, k), f"h{k}", rows[k].tolist()) for k in range(5000)], [])
    with sqlite3.connect(index) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(index, "r+b") as file:  # garbage over a page in the middle of the catalog
        file.seek(os.path.getsize(index) // 2 // 4096 * 4096)
        file.write(np.random.default_rng(1).bytes(4096))
    check = bt("index", "--check", "--index", index, "-f", "json")
    assert check.code == 1 and check.json()["repair"] == "rebuild", check.stderr
    assert (
        check.stderr.startswith(f"bt: error: the index {index} is damaged: its catalog") and "--rebuild" in check.stderr
    )
    assert "unexpected" not in check.stderr
