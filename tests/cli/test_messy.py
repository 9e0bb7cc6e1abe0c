"""Real photo folders and real fingers (issue 20): a messy tree works, every mistake is caught fast and said in one
line, and the output says what happened. Each test was written against the old code and seen to fail there."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEVICE
from helpers import CHECK_IMPORTS
from PIL import Image


@pytest.fixture
def mess(samples, tmp_path) -> Path:
    """A messy photo tree: nested folders, unicode names with spaces, .JPG, a PNG named .HEIC, a 0-byte and a
    truncated file, an animated GIF, a WebP, same-named files in two folders, a symlink loop, a dangling link."""
    root = tmp_path / "mess"
    (root / "2024" / "été à Paris").mkdir(parents=True)
    (root / "old").mkdir()
    shutil.copy(samples / "cat.jpg", root / "2024" / "été à Paris" / "Chat Noir.JPG")
    shutil.copy(samples / "coffee.jpg", root / "old" / "cat.jpg")  # same file name as below
    shutil.copy(samples / "rocket.jpg", root / "2024" / "cat.jpg")
    Image.open(samples / "astronaut.jpg").save(root / "old" / "astronaut.webp")
    Image.open(samples / "cat.jpg").convert("RGB").save(root / "old" / "really a png.HEIC", "PNG")
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    frames[0].save(root / "old" / "blink.gif", save_all=True, append_images=frames[1:])
    (root / "old" / "empty.jpg").write_bytes(b"")
    (root / "old" / "cut.jpg").write_bytes((samples / "cat.jpg").read_bytes()[:500])
    (root / "2024" / "loop").symlink_to(root, target_is_directory=True)
    (root / "old" / "gone.jpg").symlink_to(root / "nowhere.jpg")
    return root


PHOTOS = 6  # the readable ones above


def test_a_dangling_link_is_a_named_skip_in_index_and_retrieve(bt, full_checkpoint, mess, tmp_path):
    index = ["--index", tmp_path / "ix.sqlite", "-m", full_checkpoint]
    built = bt("index", mess, *index, "-f", "json")
    assert built.code == 3 and "gone.jpg: a dangling symlink" in built.stderr, built.stderr
    assert "unexpected" not in built.stderr
    found = bt("retrieve", "a cat", mess, *index, "--no-rerank", "-k", "20", "-f", "json")
    assert found.code == 3 and len(found.json()) == PHOTOS


def test_a_glob_over_a_symlink_loop_finds_each_photo_once(bt, full_checkpoint, mess):
    result = bt("score", str(mess / "**" / "*.jpg"), "a cat", "-m", full_checkpoint, "-f", "json")
    images = [r["image"] for r in result.json()]
    assert len(images) == len(set(images)) == 2  # 2024/cat.jpg and old/cat.jpg (the rest are not .jpg or unreadable)


def test_explain_never_writes_two_pictures_to_one_file(bt, full_checkpoint, mess, tmp_path):
    images = [mess / "2024" / "cat.jpg", mess / "old" / "cat.jpg"]
    out = tmp_path / "maps"
    result = bt(
        "explain", *images, "-t", "a cat", "-t", "A cat!", "--output-dir", out, "-m", full_checkpoint, "-f", "json"
    )
    assert result.code == 0, result.stderr
    pictures = [r["picture"] for r in result.json()]
    assert len(pictures) == len(set(pictures)) == 4 and all(Path(p).is_file() for p in pictures)


def test_explain_writes_the_format_its_suffix_names(bt, full_checkpoint, samples, tmp_path):
    args = ("explain", samples / "cat.jpg", "a cat", "-m", full_checkpoint)
    assert bt(*args, "-o", tmp_path / "x.jpg").code == 0
    assert (tmp_path / "x.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, not PNG bytes
    refused = bt(*args, "-o", tmp_path / "x.xyz")
    assert refused.code == 2 and "unknown suffix" in refused.stderr and not (tmp_path / "x.xyz").exists()


def test_a_byte_order_mark_is_not_part_of_the_first_caption(bt, full_checkpoint, samples, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_bytes("\ufeffa cat\na dog\n".encode())
    result = bt("score", samples / "cat.jpg", "--texts-file", captions, "-m", full_checkpoint, "-f", "json")
    assert sorted(r["text"] for r in result.json()) == ["a cat", "a dog"]


def fast(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """bt in a new process, reporting whether torch or transformers were imported (they must not be)."""
    environment = dict(os.environ, BT_DEVICE=DEVICE, **(env or {}))
    return subprocess.run([sys.executable, "-c", CHECK_IMPORTS, *map(str, args)], capture_output=True, text=True,
                          env=environment)  # fmt: skip


def heavy(result: subprocess.CompletedProcess) -> bool:
    return not result.stderr.rstrip().endswith("HEAVY=")


def test_mistakes_are_caught_before_any_model_loads(full_checkpoint, samples, tmp_path):
    (tmp_path / "bad.json").write_text('{"images": [{"filename": "x.jpg"}]}')
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text('{"model_type": "clip"}')
    cases = [
        (["score", samples / "cat.jpg", "-t", "caf\udcff", "-m", full_checkpoint], None, 1, "not valid UTF-8"),
        (["fill-mask", samples / "cat.jpg", "no mask here", "-m", full_checkpoint], None, 1, "<mask>"),
        (["eval", tmp_path / "bad.json", "-m", full_checkpoint], None, 1, "split"),
        (["score", samples / "cat.jpg", "a cat", "-m", clip], None, 1, "'clip' checkpoint"),
        (["score", samples / "cat.jpg", "a cat", "-d", "gpu", "-m", full_checkpoint], None, 2, "not a device"),
        (["score", samples / "cat.jpg", "a cat", "-m", full_checkpoint], {"BT_MAX_IMAGE_PIXELS": "lots"}, 2, "lots"),
        (["score", samples / "cat.jpg", "a cat", "-m", "bridgetower-base-itm-mlm"], None, 1, "did you mean"),
    ]
    for args, env, code, message in cases:
        result = fast(*args, env=env)
        assert result.returncode == code and message in result.stderr, (args, result.stderr)
        assert not heavy(result), args


def test_a_text_without_mask_is_skipped_named_and_the_others_filled(bt, full_checkpoint, samples):
    result = bt(
        "fill-mask", samples / "cat.jpg", "a <mask> on a couch", "no mask here", "-m", full_checkpoint, "-f", "json"
    )
    assert result.code == 3 and "'no mask here': no <mask> in it" in result.stderr
    assert [r["text"] for r in result.json()] == ["a <mask> on a couch"]


def test_nul_separated_paths_on_stdin(bt, full_checkpoint, samples):
    names = f"{samples / 'cat.jpg'}\0{samples / 'coffee.jpg'}\0"
    result = bt("score", "-", "a cat", "-0", "-m", full_checkpoint, "-f", "json", input=names)
    assert result.code == 0 and len(result.json()) == 2
    missing = bt("score", "-", "a cat", "-m", full_checkpoint, input=names)
    assert missing.code == 1 and "NUL" in missing.stderr and "-0/--null" in missing.stderr


def test_heif_photos_are_read_with_the_extra_and_counted_without_it(
    bt, full_checkpoint, samples, tmp_path, monkeypatch
):
    pytest.importorskip("pillow_heif")
    import pillow_heif

    from bridgetower_cli import images

    folder = tmp_path / "iphone"
    folder.mkdir()
    pillow_heif.register_heif_opener()
    Image.open(samples / "cat.jpg").save(folder / "IMG_0001.HEIC", "HEIF")
    shutil.copy(samples / "coffee.jpg", folder / "coffee.jpg")
    result = bt("score", folder, "a cat", "-m", full_checkpoint, "-f", "json")
    assert result.code == 0 and len(result.json()) == 2
    monkeypatch.setattr(images, "heif_registered", lambda: False)
    result = bt("score", folder, "a cat", "-m", full_checkpoint, "-f", "json")
    assert len(result.json()) == 1 and "1 files ignored (1 .heic" in result.stderr and "[heif]" in result.stderr


def test_a_query_that_looks_like_a_path(bt, full_checkpoint, samples, tmp_path):
    args = ["-m", full_checkpoint, "--index", tmp_path / "ix.sqlite", "--no-rerank", "-f", "json"]
    result = bt("retrieve", "--query", "AC/DC", samples, *args)
    assert result.code == 0 and len(result.json()) == 5


def test_no_refresh_and_no_folder_searches_the_whole_index(bt, full_checkpoint, samples, tmp_path):
    args = ["-m", full_checkpoint, "--index", tmp_path / "ix.sqlite", "--no-rerank", "-f", "json"]
    assert bt("index", samples, *args[:4]).code == 0
    result = bt("retrieve", "a rocket", "-n", *args)
    assert result.code == 0 and len(result.json()) == 5


def test_ctrl_c_shows_the_records_finished_and_says_so(bt, full_checkpoint, samples, monkeypatch):
    from bridgetower_cli.backend import Local

    real = Local.run

    def interrupted(self, *args, **kwargs):
        records = real(self, *args, **kwargs)
        yield next(records)
        raise KeyboardInterrupt

    monkeypatch.setattr(Local, "run", interrupted)
    result = bt("score", samples, "a cat", "-m", full_checkpoint, "-f", "table", env={"COLUMNS": "120"})
    assert result.code == 130 and "interrupted: 1 record(s) above were finished" in result.stderr
    assert result.stdout.count("a cat") == 1


def test_an_interrupted_index_says_how_far_it_got(bt, full_checkpoint, samples, tmp_path, monkeypatch):
    from bridgetower_cli.index.store import EmbeddingIndex

    real, calls = EmbeddingIndex.store, []

    def second_batch_interrupted(self, rows, failures, taken=None):
        calls.append(len(rows))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, rows, failures, taken)

    monkeypatch.setattr(EmbeddingIndex, "store", second_batch_interrupted)
    result = bt("index", samples, "-m", full_checkpoint, "--index", tmp_path / "ix.sqlite", "-b", "2")
    assert result.code == 130 and "interrupted: 2 of 5 images indexed; run again to resume" in result.stderr


LONG = "/photos/a very long folder name/IMG_20240101_120000_burst_0001.jpg"
NAME = LONG.split()[-1]  # the path's last word: wrapping may only happen between words


def _records_of_every_table():
    """A list of records per table kind, each with a long path or id, and the numbers (4 decimals) it must show."""
    from bridgetower_cli.records import (
        ExplainRecord,
        LabelRecord,
        ModelRecord,
        RetrievalRecord,
        ScoreRecord,
    )

    checkpoint = "BridgeTower/bridgetower-large-itm-mlm-itc"
    yield [ScoreRecord(LONG + str(k), "two cats", -1.23456, 0.98765) for k in range(2)], [NAME, "-1.2346", "0.9877"]
    yield [RetrievalRecord(1, LONG, None, 0.43211, 2.34561, 0.91231)], [NAME, "0.4321", "2.3456", "0.9123"]
    yield [LabelRecord(LONG, "a tabby cat", 0.34292625682126855, -0.9752689599990845)], [NAME, "0.3429", "-0.9753"]
    yield [ModelRecord(checkpoint, ["itm", "mlm", "itc"], 294, False, ["embed", "retrieve"])], [checkpoint, "294"]
    yield [ExplainRecord(LONG, "a cat", 5, 0.12344, [], [], None)], [NAME, "0.1234"]


@pytest.mark.parametrize("columns", [40, 50, 80])
def test_no_number_id_or_path_is_ever_cut(columns):
    from rich.console import Console

    from bridgetower_cli.cli.tables import print_tables

    for records, numbers in _records_of_every_table():
        screen = io.StringIO()
        print_tables(records, Console(file=screen, width=columns, force_terminal=False))
        shown = screen.getvalue()
        lines = shown.splitlines()
        for whole in numbers:
            assert any(whole in line for line in lines), (columns, whole, shown)
        assert "…" not in shown and "34292625" not in shown, shown  # never an ellipsis, never 17 digits
        if columns < 80:
            assert "█" not in shown


def test_eval_recalls_are_exact_and_tables_round(bt, full_checkpoint, samples):
    record = bt("eval", samples / "captions.json", "-m", full_checkpoint, "-f", "json").json()
    for key in ("txt_r1", "txt_r5", "txt_r10"):
        assert any(record[key] == 100 * k / record["images"] for k in range(record["images"] + 1)), record[key]
    for key in ("img_r1", "img_r5", "img_r10"):
        assert any(record[key] == 100 * k / record["texts"] for k in range(record["texts"] + 1)), record[key]
    table = bt("eval", samples / "captions.json", "-m", full_checkpoint, "-f", "table", env={"COLUMNS": "120"})
    assert f"{record['r_mean']:.2f}" in table.stdout and "00000" not in table.stdout


def test_the_html_page_links_the_originals_and_never_stretches_thumbnails(bt, full_checkpoint, samples, tmp_path):
    page = bt("retrieve", "a cat", samples, "-m", full_checkpoint, "--index", tmp_path / "ix.sqlite", "-f", "html")
    assert page.code == 0
    assert f'href="{(samples / "cat.jpg").as_uri()}"' in page.stdout and 'alt="cat.jpg"' in page.stdout
    assert "max-width: 100%" in page.stdout and "width: 100%; height: 200px" not in page.stdout


def test_every_help_renders_whole(bt):
    from bridgetower_cli.cli.app import COMMANDS, built

    for name, entry in COMMANDS.items():  # `bt --help` lists the summaries without building the commands
        first = (built(name).help or "").split("\n\n")[0]
        assert "\n" not in first.strip(), f"{name}: a summary that wraps leaves an orphan word"
        assert first == entry.summary, f"{name}: the summary in COMMANDS is not its docstring's first line"
    for name in ("index", "embed"):
        shown = bt(name, "--help", env={"COLUMNS": "250"}).stdout
        assert 'pip install "bridgetower-cli[ray]"' in shown, name  # (rich markup would eat [ray])
    score = bt("score", "samples/cat.jpg", "a cat", "-f", "paths")
    assert score.code == 2 and "not a format of bt score" in score.stderr


def test_an_unknown_target_word_is_an_error_naming_it(bt, full_checkpoint, samples):
    result = bt("fill-mask", samples / "cat.jpg", "a <mask>", "--targets", "zzzqqq", "-m", full_checkpoint)
    assert result.code == 1 and "'zzzqqq'" in result.stderr and "''" not in result.stderr


def test_a_hub_id_that_is_not_bridgetowers_gets_no_download_hint(bt, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    result = bt("score", "samples/cat.jpg", "a cat", "-m", "someone/some-clip-model", env=env)
    assert result.code == 1 and "hf download" not in result.stderr and "bt models" in result.stderr


def test_completion_for_a_shell_bt_cannot_complete_is_refused_and_zsh_gets_only_bts(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), SHELL="/bin/bash")
    run = [sys.executable, "-m", "bridgetower_cli", "--install-completion"]
    tcsh = subprocess.run([*run, "tcsh"], capture_output=True, text=True, env=env)
    assert tcsh.returncode == 2 and "cannot complete tcsh" in tcsh.stderr and not (tmp_path / ".bashrc").exists()
    assert subprocess.run([*run, "zsh"], capture_output=True, env=env).returncode == 0
    assert "zstyle" not in (tmp_path / ".zshrc").read_text()


def test_doctor_shows_the_bt_variables_in_effect(bt):
    report = bt("doctor", "-f", "json", env={"BT_MODEL": "x/y", "BT_INDEX": "/tmp/i.sqlite", "BT_API_KEY": "s3"}).json()
    assert report["environment"]["BT_MODEL"] == "x/y" and report["environment"]["BT_API_KEY"] == "***"


@pytest.mark.slow
def test_the_checkpoint_builder_prints_only_its_path_and_shows_its_defaults(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "bridgetower_cli.testing", tmp_path / "ck"], capture_output=True, text=True
    )
    assert built.stdout == f"{tmp_path / 'ck'}\n"
    shown = subprocess.run([sys.executable, "-m", "bridgetower_cli.testing", "--help"], capture_output=True, text=True)
    assert "(default: tiny)" in " ".join(shown.stdout.split())


def test_the_padding_warning_names_the_way_it_pads(bt, full_checkpoint, tmp_path):
    Image.new("RGB", (3000, 150), "gray").save(tmp_path / "wide.png")
    Image.new("RGB", (150, 3000), "gray").save(tmp_path / "tall.png")
    wide = bt("score", tmp_path / "wide.png", "a wall", "-m", full_checkpoint)
    tall = bt("score", tmp_path / "tall.png", "a wall", "-m", full_checkpoint)
    assert "padded to a taller frame" in wide.stderr and "padded to a wider frame" in tall.stderr


def test_json_is_what_the_records_say(bt, full_checkpoint, samples):
    result = bt("score", samples / "cat.jpg", "a cat", "-m", full_checkpoint, "-f", "json")
    assert json.loads(result.stdout)[0]["image"] == str(samples / "cat.jpg")
