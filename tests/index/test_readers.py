"""Readers that never write (issue 32): an index in a folder the user cannot write answers every reader, read-only;
a journal (-wal) with changes that such a reader cannot see without writing beside it is refused in one line, never
read past (it was opened as the file alone: the rows before the journal's changes, exit 0)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import NOBODY, as_nobody

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not NOBODY, reason="needs root and setpriv")]


@pytest.fixture
def home():
    """A folder of the test's own that nobody may enter (pytest's tmp_path is root's alone)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="bt-readers-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def library(bt, full_checkpoint, samples, home) -> Path:
    """An index of the samples built by root, in a folder only root may write (its files readable by all)."""
    folder = home / "library"
    folder.mkdir()
    built = bt("index", samples, "-m", full_checkpoint, "--index", folder / "ix.sqlite", "-f", "json")
    assert built.code == 0, built.stderr
    for path in [folder, *folder.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder / "ix.sqlite"


def test_an_index_in_a_folder_the_user_cannot_write_answers_every_reader(library):
    stats = as_nobody("index", "--stats", "--index", library, "-f", "json")
    assert stats.returncode == 0 and json.loads(stats.stdout)["images"] == 5, stats.stderr
    check = as_nobody("index", "--check", "--index", library, "-f", "json")
    assert check.returncode == 0 and json.loads(check.stdout)["damaged"] == 0, check.stderr
    assert sorted(p.name for p in library.parent.iterdir()) == ["ix.sqlite", "ix.sqlite.vectors-0",
                                                                 "ix.sqlite.vectors-0.f16"]  # fmt: skip


def test_a_journal_a_reader_cannot_see_is_refused_never_read_past(library, home):
    """A copy taken while a writer had changes in its -wal (a backup, read-only media): the -wal without its -shm."""
    copy = home / "copy"
    copy.mkdir()
    with sqlite3.connect(library) as writer:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("DELETE FROM images WHERE path LIKE '%cat.jpg'")
        writer.commit()
        for name in ("ix.sqlite", "ix.sqlite-wal"):
            shutil.copy(library.parent / name, copy / name)
    for name in ("ix.sqlite.vectors-0", "ix.sqlite.vectors-0.f16"):
        shutil.copy(library.parent / name, copy / name)
    for path in [copy, *copy.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    stats = as_nobody("index", "--stats", "--index", copy / "ix.sqlite", "-f", "json")
    said = (stats.stdout, stats.stderr)
    assert stats.returncode == 1 and "changes in its journal (ix.sqlite-wal)" in stats.stderr, said
    assert len(stats.stderr.strip().splitlines()) == 1


def test_a_vector_file_the_user_cannot_read_is_said_as_such(library):
    """Issue 32: chmod 000 on the vector file was "unexpected PermissionError" for every reader."""
    vectors = library.parent / "ix.sqlite.vectors-0"
    vectors.chmod(0o000)
    for args in (["index", "--stats"], ["index", "--check"]):
        result = as_nobody(*args, "--index", library, "-f", "json")
        assert result.returncode == 1 and result.stderr == (
            f"bt: error: cannot read the index's vector file {vectors}: permission denied (hint: check its "
            "permissions)\n"
        ), result.stderr
