"""The one guard of the files an index is made of (issue 30): an index path is a regular file that is a bt index, or
nothing yet; a device, a FIFO, a folder, a link or someone else's SQLite file is refused in one line and never opened
for writing, and a vector file bt did not make is never truncated or replaced."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(result, words: str) -> None:
    assert result.code == 1 and words in result.stderr and "--rebuild" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_what_is_not_a_file_is_never_an_index(bt, full_checkpoint, samples, tmp_path):
    model = ["-m", full_checkpoint]
    fifo, folder = tmp_path / "fifo", tmp_path / "folder"
    os.mkfifo(fifo)
    folder.mkdir()
    refused(bt("index", samples, *model, "--index", fifo, "--rebuild"), "is not an index file (a FIFO)")
    refused(bt("index", samples, *model, "--index", folder), "is not an index file (a folder)")
    refused(bt("index", samples, *model, env={"BT_INDEX": "/dev/null"}), "(a character device)")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and list(folder.iterdir()) == []
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    try:
        os.mknod(tmp_path / "nulldev", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        return  # (making a device node needs root)
    refused(bt("index", samples, *model, "--index", tmp_path / "nulldev", "--rebuild"), "(a character device)")
    assert stat.S_ISCHR(os.lstat(tmp_path / "nulldev").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder", "nulldev"]


def test_a_link_is_refused_and_its_hint_works(bt, full_checkpoint, samples, tmp_path):
    real, link = tmp_path / "real.sqlite", tmp_path / "link.sqlite"
    assert bt("index", samples, "-m", full_checkpoint, "--index", real).code == 0
    link.symlink_to(real)
    result = bt("index", samples, "-m", full_checkpoint, "--index", link)
    refused(result, "is a symbolic link")
    assert str(real) in result.stderr
    assert bt("index", samples, "-m", full_checkpoint, "--index", real).code == 0  # (what the hint names)


def foreign(path: Path, schema: str, images: str) -> None:
    """Someone's database with a meta table bt's keys are in, and a column of their own."""
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            f"CREATE TABLE images ({images}, notes TEXT);"
            "CREATE TABLE failures (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, "
            "reason TEXT NOT NULL);"
        )
        db.executemany("INSERT INTO meta VALUES (?, ?)", [("schema", schema), ("model", "x"), ("dim", "32")])
        db.execute("INSERT INTO images (path, notes) VALUES ('a.jpg', 'mine')" if schema == "9" else "SELECT 1")


@pytest.mark.parametrize(
    "schema, images",
    [
        ("1", "path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, model TEXT, embedding BLOB"),
        ("2", "path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, hash TEXT, slot INTEGER"),
    ],
)
def test_a_foreign_database_is_never_migrated_or_switched_to_wal(
    bt, full_checkpoint, samples, tmp_path, schema, images
):
    path = tmp_path / "theirs.sqlite"
    foreign(path, schema, images)
    before = digest(path)
    for args in (["index", samples], ["retrieve", "a cat", "-n"], ["index", "--stats"], ["index", "--check"]):
        refused(bt(*args, "-m", full_checkpoint, "--index", path), "is not a bt index")
    assert digest(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["theirs.sqlite"]


def test_a_planted_vector_file_is_never_truncated(bt, full_checkpoint, samples, tmp_path):
    for suffix in (".vectors-0", ".vectors-0.f16"):
        index = tmp_path / f"ix{len(suffix)}.sqlite"
        planted = Path(f"{index}{suffix}")
        planted.write_bytes(b"someone's data" * 100)
        result = bt("index", samples, "-m", full_checkpoint, "--index", index)
        assert result.code == 1 and f"{planted} is not bt's" in result.stderr, result.stderr
        assert planted.read_bytes() == b"someone's data" * 100


def test_a_refresh_counts_each_file_seen_once(bt, full_checkpoint, samples, tmp_path):
    """new + changed + unchanged + failed + elsewhere + skipped = the files seen, in the summary and in -f json."""
    import shutil

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat.jpg", "rocket.jpg", "coffee.jpg"):
        shutil.copy(samples / name, photos / name)
    (photos / "broken.jpg").write_bytes(b"not a jpeg at all")
    (photos / "dangling.jpg").symlink_to(photos / "gone.jpg")
    args = ["index", photos, "-m", full_checkpoint, "--index", tmp_path / "ix.sqlite", "-f", "json"]
    first = bt(*args)
    counts = first.json()[0]
    seen = ("new", "changed", "unchanged", "failed", "elsewhere", "skipped")
    assert first.code == 3 and sum(counts[k] for k in seen) == 5, counts
    assert (counts["new"], counts["failed"], counts["skipped"]) == (3, 1, 1), counts
    assert "index: 3 new, 0 changed, 0 removed, 0 unchanged, 1 unreadable, 1 skipped" in first.stderr
    (photos / "coffee.jpg").write_bytes((samples / "astronaut.jpg").read_bytes())
    again = bt(*args).json()[0]
    assert sum(again[k] for k in seen) == 5 and (again["changed"], again["new"]) == (1, 0), again


def test_an_index_whose_header_is_overwritten_is_said_to_be_damaged_not_foreign(bt, full_checkpoint, samples, tmp_path):
    """Issue 32: bt's own index with its SQLite header overwritten was "not a bt index … bt never overwrites it"."""
    index = tmp_path / "ix.sqlite"
    assert bt("index", samples, "-m", full_checkpoint, "--index", index).code == 0
    with open(index, "r+b") as file:
        file.write(b"x" * 100)
    result = bt("index", "--check", "--index", index)
    assert result.code == 1 and result.stderr == (
        f"bt: error: the index {index} is damaged: its SQLite header is overwritten (hint: remove {index} and its "
        "vector files (ix.sqlite.vectors-*), then index again)\n"
    )
    (tmp_path / "notes.sqlite").write_bytes(b"x" * 100)  # (a file that never was an index: still foreign)
    assert "is not a bt index" in bt("index", "--check", "--index", tmp_path / "notes.sqlite").stderr
