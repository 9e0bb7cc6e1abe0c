"""The index never lies (issue 19): slots decided inside the transactions that use them, integrity checked without a
per-query cost, damage named with the safe repair, readers that never wait or write, busy reported as busy, a full
disk that leaves the index valid, and no file embedded twice by two writers. Each test was written against the old
index and seen to fail there."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import DEVICE

from bridgetower_cli.errors import BtError, Busy, IndexDamaged
from bridgetower_cli.index.files import FileState
from bridgetower_cli.index.store import EmbeddingIndex
from bridgetower_cli.records import Outcome

DIM = 8


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dim)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def filled(path: Path, count: int, prefix: str = "/photos") -> tuple[EmbeddingIndex, list[FileState]]:
    index = EmbeddingIndex.for_writing(path, "fp", DIM)
    files = [FileState(f"{prefix}/{k:05d}.jpg", k, k) for k in range(count)]
    index.store([(f, f"h{k}", unit(k).tolist()) for k, f in enumerate(files)], [])
    return index, files


def brute_force(files: list[FileState], seeds: dict[str, int], query: np.ndarray, k: int) -> list[str]:
    scores = {f.path: float(unit(seeds[f.path]) @ query) for f in files}
    return sorted(scores, key=lambda p: -scores[p])[:k]


# -- 1. slots are decided inside the transaction that uses them -----------------------------------------------------


def test_a_compaction_between_planning_and_linking_moves_no_row_to_another_vector(tmp_path):
    """A writer plans a moved file (its content already indexed), then another process compacts the vector file,
    then the writer links: the moved file must point at its own content's vector."""
    from bridgetower_cli.tasks import indexing

    path = tmp_path / "ix.sqlite"
    writer, files = filled(path, 3000)
    other = EmbeddingIndex.for_writing(path, "fp", DIM)
    other.drop([f.path for f in files[:2000]])  # two thirds unreferenced: the next compaction renumbers every slot
    moved = tmp_path / "moved.jpg"
    moved.write_bytes(b"the content of photo 2500")
    link = writer.link

    def compact_then_link(pairs):
        other.compact()  # another bt process's compaction commits between this writer's plan and its link
        return link(pairs)

    writer.link = compact_then_link
    original_hash = indexing.content_hash
    indexing.content_hash = lambda p: "h2500" if p == str(moved) else original_hash(p)
    try:
        from bridgetower_cli.sources import ImageSource

        indexing.refresh_index(None, writer, [ImageSource("moved.jpg", path=str(moved))], Outcome())
    finally:
        indexing.content_hash = original_hash
    _, (vector,) = writer.embeddings([str(moved)])
    assert np.array_equal(vector, unit(2500))
    assert writer.verify().sound


def test_a_writer_during_a_compaction_waits_and_is_called_busy_not_corrupt(tmp_path):
    path = tmp_path / "ix.sqlite"
    compactor, files = filled(path, 3000)
    compactor.drop([f.path for f in files[:2000]])
    writer = EmbeddingIndex.for_writing(path, "fp", DIM, wait_s=0.2)
    reader = EmbeddingIndex.for_reading(path)
    written, resume = threading.Event(), threading.Event()

    def pause(step: str) -> None:
        written.set()
        resume.wait(30)

    thread = threading.Thread(target=compactor.compact, kwargs={"pause": pause})
    thread.start()
    assert written.wait(30)
    with pytest.raises(Busy, match=f"is busy: bt \\(pid {os.getpid()}\\), compacting it"):  # (it holds the lock)
        writer.store([(FileState("/new.jpg", 1, 1), "new", unit(9999).tolist())], [])
    query = unit(77)
    paths, _ = reader.search(query, 5, folders=[Path("/photos")])  # a reader never waits for it
    resume.set()
    thread.join(30)
    seeds = {f.path: k for k, f in enumerate(files)}
    assert paths == brute_force(files[2000:], seeds, query, 5)
    writer.store([(FileState("/new.jpg", 1, 1), "new", unit(9999).tolist())], [])
    assert writer.verify().sound and reader.search(unit(9999), 1, files=["/new.jpg"])[0] == ["/new.jpg"]


# -- 2. slots checked against the vector file -----------------------------------------------------------------------


def test_a_truncated_vector_file_is_damage_not_missing_results(tmp_path):
    path = tmp_path / "ix.sqlite"
    index, _ = filled(path, 750)
    vectors = index.vectors().path
    index.close()
    with open(vectors, "r+b") as file:
        file.truncate(64 + 375 * DIM * 4)
    for open_it in (lambda: EmbeddingIndex.for_reading(path), lambda: EmbeddingIndex.for_writing(path, "fp", DIM)):
        with pytest.raises(IndexDamaged, match="holds 375 rows where the catalog references 750") as damage:
            open_it()
        assert "--repair" in damage.value.hint and "--rebuild" not in damage.value.hint
    report = EmbeddingIndex.for_reading(path, check=False).verify()
    assert report.damaged == 375 and not report.sound


def test_a_missing_vector_file_is_damage(tmp_path):
    path = tmp_path / "ix.sqlite"
    index, _ = filled(path, 10)
    index.vectors().path.unlink()
    with pytest.raises(IndexDamaged, match="vector file .* is missing"):
        EmbeddingIndex.for_reading(path)


def test_scribbled_vectors_are_damage_never_a_result(tmp_path, capfd):
    path = tmp_path / "ix.sqlite"
    index, files = filled(path, 200)
    with open(index.vectors().path, "r+b") as file:
        file.seek(64 + 100 * DIM * 4)
        file.write(np.random.default_rng(1).bytes(50 * DIM * 4))  # rows 100..149 overwritten by random bytes
    reader = EmbeddingIndex.for_reading(path)
    with pytest.raises(IndexDamaged, match="damaged"):
        for k in range(100, 150):  # a query whose best hit is a scribbled row
            reader.search(unit(k), 3, folders=[Path("/photos")])
    report = reader.verify()
    assert report.damaged == 50 and sorted(report.damaged_paths) == [f.path for f in files[100:150]]
    assert "RuntimeWarning" not in capfd.readouterr().err


# -- 3. readers never take the write lock ------------------------------------------------------------------------


def test_readers_work_while_another_process_holds_the_write_lock(tmp_path):
    path = tmp_path / "ix.sqlite"
    index, files = filled(path, 50)
    index.close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing (or stuck)
    try:
        reader = EmbeddingIndex.for_reading(path)
        assert len(reader.search(unit(3), 3, folders=[Path("/photos")])[0]) == 3
        assert reader.stats().images == 50
        with pytest.raises(Busy) as busy:
            EmbeddingIndex.for_writing(path, "fp", DIM, wait_s=0.2).store([], [])
        assert "busy" in busy.value.message and "rebuild" not in (busy.value.hint or "")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder mounted read-only (a share): skips where this machine cannot bind-mount."""
    source, mounted = tmp_path / "rw", tmp_path / "ro"
    source.mkdir()
    mounted.mkdir()
    yield source, mounted
    subprocess.run(["umount", "-l", str(mounted)], capture_output=True)  # (lazily: a test may hold a file open)


def test_an_index_on_a_read_only_file_system_can_be_queried(read_only_dir):
    source, mounted = read_only_dir
    index, files = filled(source / "ix.sqlite", 50)
    index.close()
    mount = f"mount --bind {source} {mounted} && mount -o remount,bind,ro {mounted}"
    if subprocess.run(mount, shell=True, capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount read-only here")
    reader = EmbeddingIndex.for_reading(mounted / "ix.sqlite")
    seeds = {f.path: k for k, f in enumerate(files)}
    assert reader.search(unit(7), 5, folders=[Path("/photos")])[0] == brute_force(files, seeds, unit(7), 5)
    assert reader.stats().images == 50
    reader.close()


# -- 4. a full disk -----------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: skips where this machine cannot mount one."""
    mounted = tmp_path / "small"
    mounted.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mounted)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mounted
    subprocess.run(["umount", "-l", str(mounted)], capture_output=True)  # (lazily: a test may hold a file open)


def test_appends_on_a_full_disk_say_so_and_leave_the_index_valid(small_disk):
    index = EmbeddingIndex.for_writing(small_disk / "ix.sqlite", "fp", 256)
    stored = 0
    with pytest.raises(BtError, match="no space left"):
        for batch in range(1000):
            rows = [(FileState(f"/p/{batch}-{k}.jpg", k, k), f"h{batch}-{k}", unit(k, 256).tolist()) for k in range(50)]
            index.store(rows, [])
            stored += 50
    assert stored > 0 and index.count() == stored
    assert EmbeddingIndex.for_reading(small_disk / "ix.sqlite").verify().sound


def test_a_compaction_on_a_full_disk_is_skipped_and_leaves_nothing_behind(small_disk):
    index = EmbeddingIndex.for_writing(small_disk / "ix.sqlite", "fp", 16)
    files = [FileState(f"/p/{k}.jpg", k, k) for k in range(6000)]
    index.store([(f, f"h{k}", unit(k, 16).tolist()) for k, f in enumerate(files)], [])
    index.drop([f.path for f in files[:4000]])
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * max(0, free - 4096))  # what is left cannot hold the next generation
    warning = index.maintain()
    assert warning and "compaction skipped, no space left" in warning
    assert sorted(p.name for p in small_disk.iterdir() if ".vectors-" in p.name) == [
        "ix.sqlite.vectors-0",
        "ix.sqlite.vectors-0.f16",
    ]
    assert index.search(unit(5000, 16), 1, folders=[Path("/p")])[0] == ["/p/5000.jpg"]


def test_a_compaction_whose_commit_finds_the_disk_full_is_rolled_back_and_said(small_disk, monkeypatch):
    """Issue 32: the next generation written, then the disk fills before the switch commits (SQLite: "database or
    disk is full"). The query answers from the current generation, the new files are removed, one warning (the
    query failed, exit 1, and vectors-1 stayed behind)."""
    index = EmbeddingIndex.for_writing(small_disk / "ix.sqlite", "fp", 16)
    files = [FileState(f"/p/{k}.jpg", k, k) for k in range(6000)]
    index.store([(f, f"h{k}", unit(k, 16).tolist()) for k, f in enumerate(files)], [])
    index.drop([f.path for f in files[:4000]])
    real = EmbeddingIndex._next_generation

    def then_full(self, *args, **kwargs):
        real(self, *args, **kwargs)
        filler = small_disk / "filler"
        with open(filler, "wb") as file, contextlib.suppress(OSError):  # every byte taken: no room to commit
            while True:
                file.write(b"\0" * 4096)

    monkeypatch.setattr(EmbeddingIndex, "_next_generation", then_full)
    warning = index.maintain()
    (small_disk / "filler").unlink()
    assert warning and "compaction skipped, no space left" in warning
    assert sorted(p.name for p in small_disk.iterdir() if ".vectors-" in p.name) == [
        "ix.sqlite.vectors-0",
        "ix.sqlite.vectors-0.f16",
    ]
    assert index.search(unit(5000, 16), 1, folders=[Path("/p")])[0] == ["/p/5000.jpg"]


# -- 5. no duplicate work -------------------------------------------------------------------------------------------


def test_two_writers_never_embed_one_file_twice(tmp_path):
    path = tmp_path / "ix.sqlite"
    first = EmbeddingIndex.for_writing(path, "fp", DIM)
    second = EmbeddingIndex.for_writing(path, "fp", DIM)
    files = [FileState(f"/photos/{k}.jpg", k, k) for k in range(100)]
    paths = [f.path for f in files]
    with first.writing(), second.writing():
        mine, holder = first.claim(files)
        theirs, holder = second.claim(files)
        assert mine == paths and theirs == [] and holder is not None
        first.store([(f, f"h{k}", unit(k).tolist()) for k, f in enumerate(files[:40])], [])  # done, claims released
        later, _ = second.claim(files[:40])
        assert later == []  # indexed since they were planned: nothing to do
    again, _ = second.claim(files[40:])  # the first writer has finished: its claims are released
    assert again == paths[40:]


@pytest.mark.slow
def test_two_bt_index_runs_on_one_folder_embed_each_image_once(full_checkpoint, samples, tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(60):  # distinct contents: nothing can be reused by hash
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / f"{k:03d}.png")
    index = tmp_path / "ix.sqlite"
    env = dict(os.environ, BT_DEVICE=DEVICE, BT_DTYPE="float32")
    command = [
        sys.executable,
        "-m",
        "bridgetower_cli",
        "index",
        folder,
        "-m",
        full_checkpoint,
        "--index",
        index,
        "-b",
        "2",
    ]
    runs = [subprocess.Popen([*map(str, command), "-q"], env=env) for _ in range(2)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]
    with EmbeddingIndex.for_reading(index) as reader:
        assert reader.count() == 60 and reader.stats().vector_rows == 60 and reader.verify().sound


# -- 6. the float16 first pass --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_float16_first_pass_returns_the_float32_top_k(tmp_path):
    import torch  # noqa: F401  (the first pass runs where torch is loaded, as beside a model)

    from bridgetower_cli.index.search import HALF_FROM

    count = HALF_FROM + 1000
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((count, DIM)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    matrix[100:140] = matrix[99]  # exact ties
    index = EmbeddingIndex.for_writing(tmp_path / "ix.sqlite", "fp", DIM)
    files = [FileState(f"/photos/{k:06d}.jpg", k, k) for k in range(count)]
    for start in range(0, count, 8192):
        index.store([(files[k], f"h{k}", matrix[k].tolist()) for k in range(start, min(count, start + 8192))], [])
    assert index._half_copy(count) is not None
    for seed in range(5):
        query = matrix[99] if seed == 0 else rng.standard_normal(DIM).astype(np.float32)
        query /= np.linalg.norm(query)
        exact = matrix @ query
        order = np.argsort(-exact, kind="stable")[:50]
        paths, similarities = index.search(query, 50, folders=[Path("/photos")])
        assert paths == [files[k].path for k in order]
        assert np.allclose(similarities, exact[order], atol=1e-6)
    half = index.vectors(half=True).path
    with open(half, "r+b") as file:  # the copy cut short: searches fall back to float32, --check says so
        file.truncate(64 + 10 * DIM * 2)
    assert index._half_copy(count) is None
    assert index.search(matrix[7], 1, folders=[Path("/photos")])[0] == [files[7].path]
    report = index.verify()
    assert "float16 copy" in report.vector_file and report.damaged == 0
    index.copy_to_half()
    assert index.verify().sound and index._half_copy(count) is not None


def test_two_processes_creating_one_index_see_it_whole(tmp_path, monkeypatch):
    """The catalog and its vector files appear together: a second writer never finds a catalog whose vector file
    is not written yet (it used to be called damaged), nor starts it afresh over the first one's rows."""
    from bridgetower_cli.index.vectors import VectorFile

    path, creating, resume = tmp_path / "ix.sqlite", threading.Event(), threading.Event()
    real_create = VectorFile.create

    def slow_create(self):
        creating.set()
        resume.wait(30)
        real_create(self)

    monkeypatch.setattr(VectorFile, "create", slow_create)
    opened, errors = [], []

    def open_one():
        try:
            opened.append(EmbeddingIndex.for_writing(path, "fp", DIM, wait_s=30))
        except Exception as error:  # (the test reads them below)
            errors.append(error)

    first = threading.Thread(target=open_one)
    first.start()
    assert creating.wait(30)
    second = threading.Thread(target=open_one)
    second.start()
    resume.set()
    first.join(30)
    second.join(30)
    assert errors == [] and len(opened) == 2
    opened[0].store([(FileState("/a.jpg", 1, 1), "ha", unit(1).tolist())], [])
    assert opened[1].verify().sound and opened[1].count() == 1


def test_damage_is_said_once_never_nested(tmp_path):
    """Issue 32: a row that is not an embedding (NaN) was said as "is damaged: the index … is damaged: …"."""
    index, files = filled(tmp_path / "ix.sqlite", 50)
    with open(index.vectors().path, "r+b") as file:
        file.seek(64 + 7 * DIM * 4)
        file.write(np.full(DIM, np.nan, dtype=np.float32).tobytes())
    with pytest.raises(IndexDamaged) as damaged:
        index.search(unit(1), 5, folders=[Path("/photos")])
    assert str(damaged.value).count("is damaged") == 1, str(damaged.value)
