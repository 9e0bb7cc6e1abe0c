"""`bt retrieve` and `bt index`: exact two-stage ranking, an incremental SQLite index that survives crashes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DEVICE, wait_for_rows
from helpers import many_photos
from reference import contrastive, itm_logits, rgb

from bridgetower_cli import walker
from bridgetower_cli.index.vectors import VectorFile
from bridgetower_cli.model.loading import load_model
from bridgetower_cli.model.runtime import Runtime
from bridgetower_cli.records import Outcome
from bridgetower_cli.sources import expand_image_sources
from bridgetower_cli.tasks import indexing
from bridgetower_cli.tasks import retrieve as retrieval
from bridgetower_cli.testing import build_checkpoint

QUERY = "two cats on a couch"
CAPTIONS = ["a cat", "a cup of coffee", "an astronaut", "a rocket launch", "a man with a camera", "a dog"]


@pytest.fixture
def photos(samples, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in samples.glob("*.*g"):
        shutil.copy(image, folder / image.name)
    return folder


def stats_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("index:"))


def test_text_to_images_equals_stock(bt, full_checkpoint, photos, tmp_path):
    index = tmp_path / "index.sqlite"
    result = bt("retrieve", QUERY, photos, "-m", full_checkpoint, "--index", index, "-r", "10", "-f", "json")
    assert result.code == 0, result.stderr
    records = result.json()
    assert [r["rank"] for r in records] == [1, 2, 3, 4, 5]
    expected = {}
    for record in records:
        image = rgb(record["image"])
        logits = itm_logits(full_checkpoint, image, QUERY)
        expected[record["image"]] = logits.softmax(-1)[1].item()
        assert abs(record["logit"] - logits[1].item()) <= 1e-5
        assert abs(record["probability"] - logits.softmax(-1)[1].item()) <= 1e-5
        stock = contrastive(full_checkpoint, image, QUERY)
        assert abs(record["similarity"] - (stock.text_embeds[0] @ stock.image_embeds[0]).item()) <= 1e-5
    assert [r["image"] for r in records] == sorted(expected, key=expected.get, reverse=True)


def test_shortlist_then_rerank(bt, full_checkpoint, photos, tmp_path):
    index = ["--index", tmp_path / "index.sqlite", "-m", full_checkpoint, "-f", "json"]
    plain = bt("retrieve", QUERY, photos, *index, "--no-rerank").json()
    assert all("logit" not in r for r in plain)
    similarities = [r["similarity"] for r in plain]
    assert similarities == sorted(similarities, reverse=True)
    mixed = bt("retrieve", QUERY, photos, *index, "-r", "2", "-k", "4").json()
    assert len(mixed) == 4
    assert {r["image"] for r in mixed[:2]} == {r["image"] for r in plain[:2]}
    assert all("logit" in r for r in mixed[:2]) and all("logit" not in r for r in mixed[2:])
    assert [r["image"] for r in mixed[2:]] == [r["image"] for r in plain[2:4]]
    paths = bt("retrieve", QUERY, photos, *index, "--no-rerank", "-f", "paths").stdout.splitlines()
    assert paths == [r["image"] for r in plain]


def test_index_is_incremental(bt, full_checkpoint, photos, tmp_path):
    args = ["retrieve", QUERY, photos, "-m", full_checkpoint, "--index", tmp_path / "ix.sqlite", "--no-rerank"]
    assert stats_line(bt(*args).stderr) == "index: 5 new, 0 changed, 0 removed, 0 unchanged"
    assert stats_line(bt(*args).stderr) == "index: 0 new, 0 changed, 0 removed, 5 unchanged"
    touched = photos / "cat.jpg"
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same content: the embedding is kept
    assert stats_line(bt(*args).stderr) == "index: 0 new, 1 changed, 0 removed, 4 unchanged, 1 reused"
    touched.write_bytes(touched.read_bytes() + b"edited")  # new content: embedded again
    assert stats_line(bt(*args).stderr) == "index: 0 new, 1 changed, 0 removed, 4 unchanged"
    (photos / "coffee.jpg").unlink()
    result = bt(*args, "-f", "json")
    assert stats_line(result.stderr) == "index: 0 new, 0 changed, 1 removed, 4 unchanged"
    assert len(result.json()) == 4
    with sqlite3.connect(tmp_path / "ix.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 4


def test_a_moved_file_reuses_its_embedding(bt, full_checkpoint, photos, tmp_path):
    index = tmp_path / "ix.sqlite"
    args = ["retrieve", QUERY, photos, "-m", full_checkpoint, "--index", index, "--no-rerank", "-f", "json"]
    before = {Path(r["image"]).name: r["similarity"] for r in bt(*args).json()}
    (photos / "sub").mkdir()
    (photos / "cat.jpg").rename(photos / "sub" / "renamed-cat.jpg")
    result = bt(*args)
    assert stats_line(result.stderr) == "index: 1 new, 0 changed, 1 removed, 4 unchanged, 1 reused"
    after = {Path(r["image"]).name: r["similarity"] for r in result.json()}
    assert after["renamed-cat.jpg"] == before["cat.jpg"]
    with sqlite3.connect(index) as db:
        paths = [p for (p,) in db.execute("SELECT path FROM images")]
    assert str(photos / "sub" / "renamed-cat.jpg") in paths and str(photos / "cat.jpg") not in paths


def test_no_refresh_queries_the_index_as_it_is(bt, full_checkpoint, photos, tmp_path, monkeypatch):
    index = tmp_path / "ix.sqlite"
    args = ["retrieve", QUERY, photos, "-m", full_checkpoint, "--index", index, "--no-rerank", "-f", "json"]
    indexed = {r["image"] for r in bt(*args).json()}
    shutil.copy(photos / "cat.jpg", photos / "new.jpg")
    (photos / "coffee.jpg").unlink()

    def no_walk(*args, **kwargs):
        raise AssertionError("--no-refresh walked the folder")

    monkeypatch.setattr(walker, "walk", no_walk)  # bt's folder walk
    result = bt(*args, "-n")
    assert result.code == 0, result.stderr
    assert {r["image"] for r in result.json()} == indexed  # neither new.jpg nor the loss of coffee.jpg
    assert "index:" not in result.stderr


def test_index_stats_and_prune(bt, full_checkpoint, photos, tmp_path):
    index = tmp_path / "ix.sqlite"
    assert bt("index", photos, "-m", full_checkpoint, "--index", index).code == 0
    stats = bt("index", "--stats", "--index", index, "-f", "json").json()
    assert stats["images"] == 5 and stats["model"] == str(full_checkpoint) and stats["dim"] == 32
    assert stats["vector_bytes"] == 64 + 5 * 32 * 4 and stats["last_refresh"]
    (photos / "rocket.jpg").unlink()
    pruned = bt("index", "--prune", "--index", index, "-f", "json")
    assert "1 rows of files that are gone dropped" in pruned.stderr and pruned.json()["images"] == 4
    missing = bt("index", "--stats", "--index", tmp_path / "none.sqlite")
    assert missing.code == 1 and "no index at" in missing.stderr


def test_index_from_another_model_is_refused_then_rebuilt(bt, checkpoints, photos, tmp_path):
    index = tmp_path / "ix.sqlite"
    assert bt("index", photos, "-m", checkpoints["full"], "--index", index).code == 0
    copy = tmp_path / "copy"
    shutil.copytree(checkpoints["full"], copy)
    assert bt("index", photos, "-m", copy, "--index", index).code == 0  # the same weights: the same model
    other = build_checkpoint(tmp_path / "other", "tiny", seed=11)
    result = bt("index", photos, "-m", other, "--index", index)
    assert result.code == 1 and "was built with another model" in result.stderr and "--rebuild" in result.stderr
    rebuilt = bt("index", photos, "-m", other, "--index", index, "--rebuild", "-f", "json")
    assert rebuilt.code == 0 and rebuilt.json()[0]["new"] == 5


def test_a_damaged_index_gives_a_clear_error(bt, full_checkpoint, photos, tmp_path):
    index = tmp_path / "ix.sqlite"
    assert bt("index", photos, "-m", full_checkpoint, "--index", index).code == 0
    data = bytearray(index.read_bytes())
    assert len(data) >= 4 * 4096
    data[2 * 4096 :] = b"\xff" * (len(data) - 2 * 4096)  # every page past the first two scribbled over
    index.write_bytes(bytes(data))
    result = bt("retrieve", QUERY, photos, "-m", full_checkpoint, "--index", index)
    assert result.code == 1 and "is damaged" in result.stderr and "--rebuild" in result.stderr, result.stderr
    assert "unexpected" not in result.stderr
    assert bt("retrieve", QUERY, photos, "-m", full_checkpoint, "--index", index, "--rebuild").code == 0


def test_unreadable_file_is_skipped_and_remembered(bt, full_checkpoint, photos, tmp_path):
    (photos / "broken.jpg").write_text("not a jpeg")
    args = ["retrieve", QUERY, photos, "-m", full_checkpoint, "--index", tmp_path / "ix.sqlite", "-f", "json"]
    first = bt(*args)
    assert first.code == 3 and "broken.jpg" in first.stderr and len(first.json()) == 5
    second = bt(*args)
    assert second.code == 0 and "0 new" in stats_line(second.stderr)


def test_image_to_texts_runs_the_vision_tower_once(full_checkpoint, samples):
    runtime = Runtime(load_model(full_checkpoint, "full", DEVICE, "float32"))
    calls = []
    runtime.tower.vision_model.visual.embeddings.register_forward_hook(lambda *args: calls.append(1))
    (source,) = expand_image_sources([str(samples / "cat.jpg")])
    records = retrieval.retrieve_texts(runtime, source, CAPTIONS, top_k=10, rerank_k=10)
    assert calls == [1]
    image = rgb(samples / "cat.jpg")
    expected = {t: itm_logits(full_checkpoint, image, t) for t in CAPTIONS}
    probability = {t: logits.softmax(-1)[1].item() for t, logits in expected.items()}
    assert [r.text for r in records] == sorted(CAPTIONS, key=probability.get, reverse=True)
    for record in records:
        assert abs(record.logit - expected[record.text][1].item()) <= 1e-5
        assert abs(record.probability - probability[record.text]) <= 1e-5
        stock = contrastive(full_checkpoint, image, record.text)
        assert abs(record.similarity - (stock.text_embeds[0] @ stock.image_embeds[0]).item()) <= 1e-5


def test_image_to_texts_cli(bt, full_checkpoint, samples, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS))
    result = bt(
        "retrieve", "--image", samples / "cat.jpg", "-T", captions, "-m", full_checkpoint, "-k", "3", "-f", "paths"
    )
    assert result.code == 0 and len(result.stdout.splitlines()) == 3
    assert set(result.stdout.splitlines()) <= set(CAPTIONS)


def test_without_itc_heads_falls_back_to_itm_over_all(bt, checkpoints, photos, tmp_path):
    path = checkpoints["itm_mlm"]
    result = bt("retrieve", QUERY, photos, "-m", path, "--index", tmp_path / "ix.sqlite", "-f", "json", "-k", "3")
    assert result.code == 0 and "no ITC heads" in result.stderr
    records = result.json()
    expected = {str(p): itm_logits(path, rgb(p), QUERY) for p in sorted(photos.iterdir())}
    probability = {image: logits.softmax(-1)[1].item() for image, logits in expected.items()}
    assert [r["image"] for r in records] == sorted(probability, key=probability.get, reverse=True)[:3]
    for record in records:
        assert "similarity" not in record and abs(record["logit"] - expected[record["image"]][1].item()) <= 1e-5
    assert not (tmp_path / "ix.sqlite").exists()


BT_INDEX = [sys.executable, "-m", "bridgetower_cli", "index"]


def test_sigkill_mid_build_leaves_a_valid_index_that_resumes(full_checkpoint, samples, tmp_path):
    folder = many_photos(samples, tmp_path / "many", 400)
    index = tmp_path / "ix.sqlite"
    env = dict(os.environ, BT_DEVICE=DEVICE, BT_DTYPE="float32")
    command = [*BT_INDEX, folder, "-m", full_checkpoint, "--index", index, "-b", "4", "-q"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    committed = wait_for_rows(process, index, 8, timeout_s=120)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert committed >= 8, "the build finished or never committed before the kill"
    with sqlite3.connect(index) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    assert 8 <= kept < 400
    resumed = subprocess.run([*command[:-1], "-f", "json"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    import json

    (stats,) = json.loads(resumed.stdout)
    assert stats["new"] == 400 - kept and stats["unchanged"] == kept
    from bridgetower_cli.index.store import EmbeddingIndex

    with sqlite3.connect(index) as db:
        paths = [p for (p,) in db.execute("SELECT path FROM images")]
    _, matrix = EmbeddingIndex.for_reading(index).embeddings(paths)
    assert len(paths) == 400 and np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-5)  # no torn vector


def test_two_processes_share_one_index(full_checkpoint, samples, tmp_path):
    index = tmp_path / "ix.sqlite"
    env = dict(os.environ, BT_DEVICE=DEVICE, BT_DTYPE="float32")
    folders = [many_photos(samples, tmp_path / f"set{k}", 30) for k in range(2)]
    runs = [
        subprocess.Popen([*BT_INDEX, f, "-m", full_checkpoint, "--index", index, "-b", "2", "-q"], env=env)
        for f in folders
    ]
    assert [p.wait(timeout=300) for p in runs] == [0, 0]
    with sqlite3.connect(index) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 60


def test_similarities_are_cosines(full_checkpoint, photos, tmp_path):
    from bridgetower_cli.index.store import EmbeddingIndex

    runtime = Runtime(load_model(full_checkpoint, "full", DEVICE, "float32"))
    index = EmbeddingIndex.for_writing(tmp_path / "ix.sqlite", "m", 32)
    sources = expand_image_sources([str(photos)])
    indexing.refresh_index(runtime, index, sources, Outcome())
    _, matrix = index.embeddings(s.path for s in sources)
    assert matrix.shape == (5, 32)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-5)


def inside_the_third_batch(index: Path) -> bool:
    """Whether bt is inside the transaction of its third batch of 4, that batch's vectors written (so at its rows,
    where the slow trigger holds it): the catalog commits 9 rows (the first run's and two batches), the vector
    file holds those 4 more, bt holds the writer's lock, and the catalog still commits 9 rows after that. (A
    transaction of bt's before or after that batch, or a test slow to look, never passes for it.)"""

    def committed(db) -> dict:
        return dict(db.execute("SELECT key, value FROM meta WHERE key IN ('dim', 'generation', 'rows')"))

    with contextlib.closing(sqlite3.connect(index, timeout=0)) as db:
        meta = committed(db)
        if int(meta["rows"]) != 9:
            return False
        if VectorFile(index, int(meta["generation"]), int(meta["dim"])).rows_on_disk() != 13:
            return False
        try:
            db.execute("BEGIN IMMEDIATE")  # refused while bt's write transaction is open
        except sqlite3.OperationalError:
            return int(committed(db)["rows"]) == 9
        db.rollback()
        return False


def test_ctrl_c_mid_build_rolls_back_cleanly(full_checkpoint, samples, tmp_path):
    """SIGINT while a batch is being written (inside its transaction): that batch is rolled back, the ones before
    are kept, exit status 130 without a traceback. A trigger makes inserting img0010 take seconds of SQLite's own
    work (which no signal interrupts), and the signal is sent only once bt is seen inside that third batch's
    transaction, its vectors written: it lands there whatever the machine's load."""
    folder = many_photos(samples, tmp_path / "many", 40)
    index = tmp_path / "ix.sqlite"
    env = dict(os.environ, BT_DEVICE=DEVICE, BT_DTYPE="float32")
    command = [*BT_INDEX, folder, "-m", full_checkpoint, "--index", index, "-b", "4"]
    first = many_photos(samples, tmp_path / "first", 1)
    assert subprocess.run([*BT_INDEX, first, "-m", full_checkpoint, "--index", index, "-q"], env=env).returncode == 0
    with sqlite3.connect(index) as db:
        db.execute("CREATE TABLE slow (x INTEGER)")
        db.executemany("INSERT INTO slow VALUES (?)", [(k,) for k in range(1000)])
        db.execute(
            "CREATE TRIGGER slow_insert AFTER INSERT ON images WHEN NEW.path LIKE '%many/img0010.jpg' "
            "BEGIN SELECT count(*) FROM slow a, slow b, slow c; END"
        )
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    in_transaction = False
    while not in_transaction and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        in_transaction = inside_the_third_batch(index)
    assert in_transaction, "never caught bt inside the slow batch's transaction"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130 and "Traceback" not in stderr
    with sqlite3.connect(index) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept = [p for (p,) in db.execute("SELECT path FROM images WHERE path LIKE '%many/%' ORDER BY path")]
    assert kept == [str(folder / f"img{k:04d}.jpg") for k in range(8)]  # the two batches committed before
