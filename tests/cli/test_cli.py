"""The command line as a careful user meets it: which argument is an image and which a text, what "best first"
means, streaming, contradictory input, messages on stderr, help, completion, pipes, threads and `bt doctor`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEVICE
from PIL import Image
from reference import contrastive, itm_logits, rgb

from bridgetower_cli.model.catalog import KNOWN_CHECKPOINTS
from bridgetower_cli.model.loading import load_model
from bridgetower_cli.model.runtime import Runtime
from bridgetower_cli.records import Outcome, Reporter
from bridgetower_cli.sources import expand_image_sources
from bridgetower_cli.tasks import pairs
from bridgetower_cli.tasks import retrieve as retrieval

# -- images are never taken for texts ------------------------------------------------------------------------------


def test_an_image_after_a_text_is_an_image(bt, full_checkpoint, samples):
    result = bt("score", samples / "cat.jpg", "a cat", samples / "rocket.jpg", "-m", full_checkpoint, "-f", "json")
    assert result.code == 0, result.stderr
    assert {(r["image"], r["text"]) for r in result.json()} == {
        (str(samples / "cat.jpg"), "a cat"),
        (str(samples / "rocket.jpg"), "a cat"),
    }
    first = bt("fill-mask", "a <mask>", samples / "cat.jpg", "-m", full_checkpoint, "-f", "json")
    assert first.code == 0 and first.json()[0]["image"] == str(samples / "cat.jpg")


@pytest.mark.parametrize(
    "argument, message",
    [
        ("{samples}/missing/", "no such file or directory: {samples}/missing/"),
        ("cat.jgp", "no such file or directory: cat.jgp"),
        ("{captions}", "is a text file, not an image (hint: read texts from it with --texts-file"),
    ],
)
@pytest.mark.parametrize("command", ["score", "fill-mask"])
def test_a_path_that_names_no_image_is_an_error_not_a_caption(
    bt, full_checkpoint, samples, tmp_path, command, argument, message
):
    captions = tmp_path / "captions.txt"
    captions.write_text("a cat\n")
    names = {"samples": samples, "captions": captions}
    result = bt(command, samples / "cat.jpg", argument.format(**names), "a <mask>", "-m", full_checkpoint)
    assert result.code == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert message.format(**names) in line


def test_text_option_passes_any_caption(bt, full_checkpoint, samples):
    result = bt("score", samples / "cat.jpg", "-t", "cat.jpg", "-t", "in/out", "-m", full_checkpoint, "-f", "json")
    assert result.code == 0, result.stderr
    assert {r["text"] for r in result.json()} == {"cat.jpg", "in/out"}


# -- best first means the highest match probability ------------------------------------------------------------------


def test_two_stage_orders_reranked_hits_by_probability():
    # Item 0 has the higher match logit but the lower probability (softmax over both ITM logits).
    scores = {0: (2.0, 0.30), 1: (1.0, 0.70), 2: (0.5, 0.50)}
    similarities = torch.tensor([0.9, 0.8, 0.7, 0.1]).numpy()
    hits = retrieval.two_stage(similarities, 4, top_k=4, rerank_k=3, rescore=lambda shortlist: scores)
    assert [item for item, _, _ in hits] == [1, 2, 0, 3]
    assert hits[3][2] is None and hits[3][1] == pytest.approx(0.1)


def test_score_records_are_ordered_by_the_probability_printed(full_checkpoint, samples):
    runtime = Runtime(load_model(full_checkpoint, "full", DEVICE, "float32"))
    texts = ["a cat", "two cats on a couch", "a rocket launch", "a cup of coffee", "an astronaut"]
    sources = expand_image_sources([str(samples / "cat.jpg")])
    records = list(pairs.score(runtime, sources, texts, Outcome()))
    image = rgb(samples / "cat.jpg")
    stock = {t: itm_logits(full_checkpoint, image, t).softmax(-1)[1].item() for t in texts}
    assert [r.text for r in records] == sorted(texts, key=stock.get, reverse=True)


# -- streaming -----------------------------------------------------------------------------------------------------


class Advances(Reporter):
    def __init__(self):
        self.done = 0

    def progress(self, total, description):
        import contextlib

        @contextlib.contextmanager
        def counting():
            def advance(n=1):
                self.done += n

            yield advance

        return counting()


@pytest.mark.parametrize("task", ["score", "fill_mask"])
def test_each_image_is_emitted_before_the_next_is_read(full_checkpoint, samples, task):
    runtime = Runtime(load_model(full_checkpoint, "full", DEVICE, "float32"))
    sources = expand_image_sources([str(samples / "cat.jpg"), str(samples / "rocket.jpg")])
    texts = ["a <mask> on a couch", "a <mask> at night"]
    reporter = Advances()
    records = getattr(pairs, task)(runtime, sources, texts, Outcome(), batch_size=1, reporter=reporter)
    first = next(records)
    assert first.image == sources[0].name
    assert reporter.done <= len(texts)  # only the first image's pairs have run
    rest = list(records)
    assert reporter.done == 2 * len(texts) and len(rest) == 2 * len(texts) - 1


# -- contradictory or impossible input ------------------------------------------------------------------------------


def test_retrieve_with_itc_alone(bt, checkpoints, samples, tmp_path):
    path = checkpoints["itc"]
    args = ["retrieve", "two cats", samples, "-m", path, "--index", tmp_path / "ix.sqlite", "-f", "json"]
    result = bt(*args, "--no-rerank")
    assert result.code == 0, result.stderr
    for record in result.json():
        stock = contrastive(path, rgb(record["image"]), "two cats")
        assert abs(record["similarity"] - (stock.text_embeds[0] @ stock.image_embeds[0]).item()) <= 1e-5
    refused = bt(*args)
    assert refused.code == 1 and "no image-text matching (ITM) head" in refused.stderr


@pytest.mark.parametrize(
    "name, command",
    [
        ("backbone", ["retrieve", "a cat", "{samples}", "--index", "{index}"]),
        ("backbone", ["retrieve", "a cat", "{samples}", "--index", "{index}", "--no-rerank"]),
        ("mlm", ["score", "{cat}", "a cat"]),
        ("itc", ["fill-mask", "{cat}", "a <mask>"]),
        ("itm_mlm", ["embed", "{cat}"]),
    ],
)
def test_a_refusal_names_a_checkpoint_with_every_head_needed(bt, checkpoints, samples, tmp_path, name, command):
    args = [a.format(samples=samples, cat=samples / "cat.jpg", index=tmp_path / "ix.sqlite") for a in command]
    result = bt(*args, "-m", checkpoints[name])
    assert result.code == 1
    suggested = re.search(r"--model (\S+)\)", result.stderr).group(1)
    heads = next(c.heads for c in KNOWN_CHECKPOINTS if c.id == suggested)
    needed = {"retrieve": {"itm", "itc"}, "score": {"itm"}, "fill-mask": {"mlm"}, "embed": {"itc"}}[command[0]]
    if "--no-rerank" in command:
        needed = {"itc"}
    assert needed <= set(heads), result.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--text", "a dog"], "--text and --texts-file give the texts to rank for an --image"),
        (["--texts-file", "{captions}"], "--text and --texts-file give the texts to rank for an --image"),
    ],
)
def test_retrieve_refuses_options_it_would_ignore(bt, full_checkpoint, samples, tmp_path, extra, message):
    captions = tmp_path / "captions.txt"
    captions.write_text("a cat\n")
    args = ["retrieve", "a cat", samples, "-m", full_checkpoint, *(e.format(captions=captions) for e in extra)]
    result = bt(*args)
    assert result.code == 1 and message in result.stderr


def test_stdin_cannot_be_both_images_and_texts(bt, full_checkpoint, samples):
    for command in (["score", "-"], ["fill-mask", "-"], ["embed", "-"]):
        result = bt(*command, "--texts-file", "-", "-m", full_checkpoint, input=f"{samples / 'cat.jpg'}\n")
        assert result.code == 1 and "standard input cannot hold both image paths and texts" in result.stderr


def test_an_image_query_ranks_images_like_it(bt, full_checkpoint, samples, tmp_path):
    index = ["--index", tmp_path / "ix.sqlite", "-m", full_checkpoint, "-f", "json"]
    for args in (["retrieve", samples / "cat.jpg", samples], ["retrieve", "--like", samples / "cat.jpg", samples]):
        result = bt(*args, *index)
        assert result.code == 0, result.stderr
        records = result.json()
        assert records[0]["image"] == str(samples / "cat.jpg") and abs(records[0]["similarity"] - 1) <= 1e-5
        assert all("logit" not in r for r in records)  # image-image: ITC likeness, no ITM
    query = contrastive(full_checkpoint, rgb(samples / "cat.jpg"), "a").image_embeds[0]
    for record in records:
        other = contrastive(full_checkpoint, rgb(record["image"]), "a").image_embeds[0]
        assert abs(record["similarity"] - (query @ other).item()) <= 1e-5


# -- messages on stderr ------------------------------------------------------------------------------------------------


def test_repeated_warnings_are_summarised(bt, full_checkpoint, tmp_path):
    folder = tmp_path / "panoramas"
    folder.mkdir()
    for k in range(6):
        Image.new("RGB", (2000 + k, 100), "gray").save(folder / f"wide{k}.png")
    result = bt("score", folder, "a wall", "-m", full_checkpoint, "-f", "json")
    assert result.code == 0, result.stderr
    assert result.stderr.count("padded to a taller frame") == 3  # (wide images: padded above and below)
    assert "3 more elongated images padded (not shown)" in result.stderr


def test_loading_shows_a_status_on_a_terminal(full_checkpoint):
    import io

    from rich.console import Console

    from bridgetower_cli.backend import Local, ModelOptions
    from bridgetower_cli.cli.render import StderrReporter

    options = ModelOptions(str(full_checkpoint), device=DEVICE, dtype="float32")
    screen = io.StringIO()
    reporter = StderrReporter(console=Console(file=screen, force_terminal=True, width=100))
    Local(options).runtime(reporter, ("itm",))
    assert f"loading {full_checkpoint}" in screen.getvalue()
    quiet = io.StringIO()
    silent = StderrReporter(quiet=True, console=Console(file=quiet, force_terminal=True))
    Local(options).runtime(silent, ("itm",))
    assert quiet.getvalue() == ""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux for a real terminal")
def test_warnings_and_progress_on_a_real_terminal(full_checkpoint, tmp_path, samples):
    """In a real terminal (tmux): every warning on a line of its own, no progress bar left behind."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(5):
        Image.new("RGB", (2000 + k, 100), "gray").save(folder / f"wide{k}.png")
        shutil.copy(samples / "cat.jpg", folder / f"cat{k}.jpg")
    (folder / "broken.jpg").write_text("not a jpeg")
    done = tmp_path / "done"
    command = (
        f"env -u COLUMNS -u LINES {sys.executable} -m bridgetower_cli score {folder} 'a cat' -m {full_checkpoint} "
        f"-b 1 -k 1 -d {DEVICE}; "
        f"echo EXIT=$? > {done}; sleep 60"
    )
    session = f"bt-test-{os.getpid()}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "60", command], check=True)
    try:
        for _ in range(1200):
            if done.exists():
                break
            subprocess.run(["sleep", "0.1"])
        screen = subprocess.run(
            ["tmux", "capture-pane", "-p", "-S", "-", "-t", session], capture_output=True, text=True, check=True
        ).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert done.read_text().strip() == "EXIT=3", screen
    lines = [line.rstrip() for line in screen.splitlines() if line.strip()]
    warnings = [line for line in lines if "warning:" in line or "skipped:" in line]
    assert warnings and all(line.startswith(("warning:", "skipped:")) for line in warnings), screen
    assert sum("broken.jpg" in line for line in lines) == 1, screen
    assert not any("scoring pairs" in line for line in lines), screen  # the bar is gone
    assert sum(line.startswith("│ ") and ("cat" in line or "wide" in line) for line in lines) == 10  # one table


def test_one_compact_table_for_many_images(bt, full_checkpoint, samples):
    args = ["score", samples, "a cat", "a dog", "-m", full_checkpoint, "-k", "1", "-f", "table"]
    result = bt(*args, env={"COLUMNS": "160"})
    assert result.code == 0
    rows = [line for line in result.stdout.splitlines() if "│" in line]
    assert len(rows) == 5  # a row per image
    assert result.stdout.count("┃ image") == 1


# -- help, usage errors, completion, pipes ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["score", "fill-mask", "embed", "retrieve", "index", "models", "doctor"])
def test_help_has_no_type_placeholders(bt, command):
    result = bt(command, "--help", env={"COLUMNS": "200"})
    assert result.code == 0
    assert not re.search(r"<(bool|str|int|list|path|float)", result.stdout), result.stdout
    assert " open" not in result.stdout  # examples run on Linux
    if command in ("score", "fill-mask", "embed", "retrieve", "index"):
        assert "Default model: BridgeTower/" in result.stdout


def test_index_help_describes_its_own_arguments(bt):
    result = bt("index", "--help", env={"COLUMNS": "200"})
    arguments = result.stdout.split("Options")[0]
    assert "Local images" in arguments and "text" not in arguments.lower() and "URL" not in arguments


def test_usage_errors_are_one_line(bt, samples):
    for args in (["score", samples / "cat.jpg", "a cat", "--dtype", "float64"], ["score"], ["scor"]):
        result = bt(*args)
        assert result.code == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("bt: error: ") and "(hint: see bt" in line


@pytest.mark.slow
@pytest.mark.parametrize("shell, installed", [("zsh", ".zfunc/_bt"), ("bash", ".bash_completions/bt.sh")])
def test_install_completion_for_the_shell_named(tmp_path, shell, installed):
    env = dict(os.environ, HOME=str(tmp_path), SHELL="/bin/bash")
    result = subprocess.run(
        [sys.executable, "-m", "bridgetower_cli", "--install-completion", shell], capture_output=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / installed).is_file()
    assert "_BT_COMPLETE" in (tmp_path / installed).read_text()


@pytest.mark.slow
def test_a_closed_pipe_ends_like_a_unix_filter(full_checkpoint, samples):
    command = (
        f"{sys.executable} -m bridgetower_cli embed {samples} -m {full_checkpoint} -b 1 -f jsonl -d {DEVICE} "
        "| head -1; echo STATUS=${PIPESTATUS[0]} >&2"
    )
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr.strip().splitlines() == ["STATUS=141"], result.stderr  # killed by SIGPIPE, not a word


def test_paths_with_print0(bt, full_checkpoint, samples, tmp_path):
    spaced = tmp_path / "my photos"
    shutil.copytree(samples, spaced, ignore=shutil.ignore_patterns("*.md"))
    args = ["retrieve", "a cat", spaced, "-m", full_checkpoint, "--index", tmp_path / "ix.sqlite", "--no-rerank"]
    result = bt(*args, "-f", "paths", "-0")
    assert result.code == 0
    paths = result.stdout.split("\0")
    assert paths[-1] == "" and len(paths[:-1]) == 5 and all(Path(p).is_file() for p in paths[:-1])


def test_repeated_texts_from_a_file_count_once(bt, full_checkpoint, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("a cat\na dog\na cat\n")
    result = bt("embed", "-T", texts, "-m", full_checkpoint, "-f", "json")
    assert [r["text"] for r in result.json()] == ["a cat", "a dog"]


def test_a_large_jpeg_is_read_at_reduced_scale(bt, full_checkpoint, tmp_path):
    photo = tmp_path / "big.jpg"
    Image.new("RGB", (1200, 900), "teal").save(photo)
    result = bt("score", photo, "a wall", "-m", full_checkpoint, "-f", "json", env={"BT_MAX_IMAGE_PIXELS": "300000"})
    assert result.code == 0, result.stderr
    png = tmp_path / "big.png"
    Image.new("RGB", (1200, 900), "teal").save(png)
    refused = bt("score", png, "a wall", "-m", full_checkpoint, env={"BT_MAX_IMAGE_PIXELS": "300000"})
    assert refused.code == 1 and "too large to decode safely" in refused.stderr


# -- threads and doctor ----------------------------------------------------------------------------------------------


def test_threads_option(bt, full_checkpoint, samples):
    before = torch.get_num_threads()
    try:
        assert bt("score", samples / "cat.jpg", "a cat", "-m", full_checkpoint, "--threads", "1").code == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_doctor_reports_the_environment(published, tmp_path):
    from helpers import put_in_hf_cache

    put_in_hf_cache(tmp_path / "hub", "BridgeTower/bridgetower-base-itm-mlm", published["bridgetower-base-itm-mlm"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "BT_"))}
    env |= {"HF_HUB_CACHE": str(tmp_path / "hub"), "BT_INDEX": str(tmp_path / "ix.sqlite")}
    env |= {"BT_INT8_CACHE": str(tmp_path / "int8")}
    result = subprocess.run(
        [sys.executable, "-m", "bridgetower_cli", "doctor", "-d", "cpu", "-f", "json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["device"] == "cpu" and report["dtype"] == "float32" and report["torch"] == torch.__version__
    assert report["hf_cache"] == str(tmp_path / "hub") and report["index"] == str(tmp_path / "ix.sqlite")
    assert report["cached_checkpoints"] == ["BridgeTower/bridgetower-base-itm-mlm"]
    assert not report["index_exists"]
    assert report["int8_cache"] == str(tmp_path / "int8") and report["onnxruntime"] != "not installed"
