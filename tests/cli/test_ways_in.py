"""Every way in, the same rules (issue 30): a list on standard input skips what a walk would skip, names as listed,
one image per file however many names reach it, and a folder that cannot be listed is a named skip whose index rows
stay. (The lists and links run on the fake model; the unreadable folder runs bt as another user.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import as_nobody


@pytest.fixture
def tree(samples, tmp_path) -> Path:
    """cat.jpg and rocket.jpg, a dangling link, a FIFO, a name with a trailing space, a hard link of cat.jpg."""
    folder = tmp_path / "tree"
    folder.mkdir()
    for name in ("cat.jpg", "rocket.jpg"):
        shutil.copy(samples / name, folder / name)
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")
    os.mkfifo(folder / "fifo.jpg")
    shutil.copy(samples / "coffee.jpg", folder / "trailing.jpg ")
    os.link(folder / "cat.jpg", folder / "same-cat.jpg")
    return folder


def test_a_nul_list_skips_what_a_walk_skips_and_keeps_the_rest(bt, fake, tree):
    listed = [tree / "cat.jpg", tree / "dangling.jpg", tree / "fifo.jpg", tree / "vanished.jpg", tree / "rocket.jpg"]
    result = bt("embed", "-", "-0", "-f", "json", input="\0".join(map(str, listed)) + "\0")
    assert result.code == 3, result.stderr
    assert [r["image"] for r in result.json()] == [str(tree / "cat.jpg"), str(tree / "rocket.jpg")]
    for name, why in (("dangling.jpg", "a dangling symlink"), ("fifo.jpg", "not a regular file (a FIFO)"),
                      ("vanished.jpg", "no such file or directory")):  # fmt: skip
        assert f"skipped: {tree / name}: {why}" in result.stderr
    assert "3 input(s) skipped" in result.stderr


def test_a_line_list_keeps_names_as_listed(bt, fake, tree):
    listed = f"{tree / 'trailing.jpg '}\n{tree / 'rocket.jpg'}\r\n"
    result = bt("score", "-", "a cat", "-f", "json", input=listed)
    assert result.code == 0, result.stderr
    assert {r["image"] for r in result.json()} == {str(tree / "trailing.jpg "), str(tree / "rocket.jpg")}


def test_a_hard_linked_photo_is_one_image(bt, fake, tree):
    walked = bt("score", tree, "a cat", "-f", "json")  # (the walk: dangling and FIFO skipped when read, by the fake)
    images = {r["image"] for r in walked.json()}
    assert len(images & {str(tree / "cat.jpg"), str(tree / "same-cat.jpg")}) == 1
    named = bt("score", tree / "cat.jpg", tree / "same-cat.jpg", "a cat", "-f", "json")
    assert named.code == 0 and len(named.json()) == 1
    listed = bt("embed", "-", "-f", "json", input=f"{tree / 'cat.jpg'}\n{tree / 'same-cat.jpg'}\n")
    assert listed.code == 0 and len(listed.json()) == 1


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_folder_that_cannot_be_listed_is_a_skip_and_its_rows_stay(full_checkpoint, samples):
    """As a user without the right to list ``tree/locked`` (root reads everything: bt runs as nobody, in a home of
    its own under /tmp, with a copy of the checkpoint)."""
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="bt-nobody-"))
    tree, locked = home / "tree", home / "tree" / "locked"
    locked.mkdir(parents=True)
    shutil.copy(samples / "cat.jpg", tree / "cat.jpg")
    shutil.copy(samples / "rocket.jpg", locked / "rocket.jpg")
    shutil.copytree(full_checkpoint, home / "checkpoint")
    for path in [home, *home.rglob("*")]:
        shutil.chown(path, "nobody", "nogroup")
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "BT_INDEX": str(home / "ix.sqlite")}
    model = ["-m", home / "checkpoint", "--device", "cpu"]
    first = as_nobody("index", tree, *model, "-f", "json", env=env)
    assert first.returncode == 0 and '"new": 2' in first.stdout, first.stderr
    locked.chmod(0o000)
    try:
        scored = as_nobody("score", tree, "a cat", *model, "-f", "json", env=env)
        assert scored.returncode == 3, scored.stderr
        assert f"skipped: {locked}: a folder that cannot be listed: permission denied" in scored.stderr
        alone = as_nobody("score", locked, "a cat", *model, env=env)
        assert alone.returncode == 1 and f"cannot list the folder {locked}: permission denied" in alone.stderr
        again = as_nobody("index", tree, *model, "-f", "json", env=env)
        assert again.returncode == 3 and '"removed": 0' in again.stdout, (again.stdout, again.stderr)
        stats = as_nobody("index", "--stats", "-f", "json", env=env)
        assert '"images": 2' in stats.stdout and '"stale": 1' in stats.stdout, stats.stdout  # (kept, marked)
        locked.chmod(0o755)
        seen = as_nobody("index", tree, *model, "-f", "json", env=env)
        assert seen.returncode == 0 and '"unchanged": 2' in seen.stdout, (seen.stdout, seen.stderr)
        assert '"stale": 0' in as_nobody("index", "--stats", "-f", "json", env=env).stdout
    finally:
        locked.chmod(0o755)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize(
    "args, words",
    [
        (["retrieve", "a cat", "{samples}", "--no-rerank", "-r", "3"], "--no-rerank and --rerank-k contradict"),
        (["retrieve", "a cat", "{samples}", "-f", "csv", "-0"], "it goes with -f paths"),
        (["index", "--check", "--repair"], "--check and --repair exclude each other"),
        (["classify", "{samples}", "--labels", "cat,,dog"], "an empty label in --labels"),
        (["fill-mask", "{samples}", "a <mask>", "--targets", ""], "the target words are empty"),
        (["explain", "{samples}", "a cat", "-o", "x.png", "--output-dir", "d"], "exclude each other"),
        (["embed", "{samples}", "--output", "out.csv"], "unknown format"),
        (["classify", "{samples}", "-l", "cat,dog", "-L", "{samples}/captions.json"], "--labels and --labels-file"),
        (["classify", "{samples}", "-l", "a,b", "--template", "{{}}", "--templates", "t"], "--template and"),
    ],
)
def test_conflicts_and_empties_are_usage_errors(bt, fake, samples, args, words):
    result = bt(*[a.format(samples=samples) for a in args])
    assert result.code == 2 and words in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert not fake or fake[-1].calls == []  # (nothing ran)


def test_a_server_that_is_no_url_is_a_usage_error(bt, samples):
    result = bt("score", samples, "a cat", env={"BT_SERVER": "nonsense"})
    assert result.code == 2 and "'nonsense' is not a bt server" in result.stderr, result.stderr


def test_a_keep_alive_that_does_not_parse_is_a_usage_error_on_the_automatic_path(bt, samples, tmp_path):
    env = {"BT_SERVER": "auto", "BT_KEEP_ALIVE": "forever", "XDG_RUNTIME_DIR": str(tmp_path)}
    result = bt("score", samples, "a cat", env=env)
    assert result.code == 2 and result.stderr == (
        "bt: error: BT_KEEP_ALIVE=forever is not a duration (hint: e.g. 30s, 10m, 1h)\n"
    )
    assert not (tmp_path / "bt").exists()  # (no server started)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("fmt", ["json", "jsonl", "table"])
def test_a_full_disk_is_one_line(fmt):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "bridgetower_cli", "models", "-f", fmt], stdout=full,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert result.returncode == 1 and result.stderr == (
        "bt: error: cannot write the output: no space left on device "
        "(hint: free some space, or write the output elsewhere)\n"
    )


def _followed(args: list[str], hint: str) -> list[str]:
    """The command line a hint asks for: the argument it names given instead with the option it names."""
    match = re.search(r"pass (-[-\w]+) '([^']*)'|with (--[-\w]+) (\S+?)[,)]", hint)
    assert match, hint
    option, value = (match[1], match[2]) if match[1] else (match[3], match[4])
    at = args.index(value)
    if option == "--texts-file":
        return args[:at] + args[at + 1 :] + [option, value]
    return args[:at] + [option, value] + args[at + 1 :]


@pytest.mark.parametrize(
    "args",
    [
        ["retrieve", "AC/DC", "{samples}"],  # the query looks like a path: -Q
        ["score", "{samples}/cat.jpg", "AC/DC"],  # a caption that looks like a path: -t
        ["fill-mask", "{samples}/cat.jpg", "{texts}"],
        ["score", "{samples}/cat.jpg", "{texts}"],  # a text file among the images: --texts-file
    ],
)
def test_every_hint_that_names_an_option_works_when_followed(bt, fake, samples, tmp_path, args):
    (tmp_path / "captions.txt").write_text("a <mask> cat\na dog <mask>\n")
    args = [a.format(samples=samples, texts=tmp_path / "captions.txt") for a in args]
    index = ["--index", str(tmp_path / "ix.sqlite")] if args[0] == "retrieve" else []
    refused = bt(*args, *index)
    assert refused.code != 0 and "hint:" in refused.stderr, refused.stderr
    followed = bt(*_followed(args, refused.stderr), *index, "-f", "json")
    assert followed.code == 0, (refused.stderr, followed.stderr)


def test_a_mask_text_that_looks_like_a_path_is_a_text(bt, fake, samples):
    result = bt("fill-mask", samples / "cat.jpg", "AC/<mask>", "-f", "json")
    assert result.code == 0 and result.json()[0]["text"] == "AC/<mask>", result.stderr


def test_a_key_on_the_command_line_is_warned_about_and_a_key_file_must_be_private(bt, fake, samples, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    key_file.chmod(0o644)
    args = ("score", samples / "cat.jpg", "a cat", "--server", "http://127.0.0.1:9", "-f", "json")
    opened = bt(*args, "--api-key-file", key_file)
    assert opened.code == 2 and f"the key file {key_file} is open to other users" in opened.stderr
    assert bt(*args, "--api-key", "k", "--api-key-file", key_file).code == 2
    warned = bt(*args, "--api-key", "k", env={"BT_API_KEY": ""})
    assert warned.code == 0 and "visible to every user of this machine" in warned.stderr, warned.stderr
