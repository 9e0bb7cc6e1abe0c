"""`--server auto`: the automatic server on a private Unix socket. Every command prints through it what it prints in
process (records, order, skips, warnings, exit codes, progress); the first call starts it, later ones reuse it, two
first calls start one, another identity replaces it, it exits when idle, a stale socket is replaced, a server that
cannot start falls back to in process, and Ctrl-C on the client stops the work on the server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BT_ENV, DEVICE
from helpers import CHECK_IMPORTS, auto_env, held_answer, place, private, server_pids, stop_all, wait_until

pytest.importorskip("fastapi")

from bridgetower_cli import autoserver  # noqa: E402

pytestmark = pytest.mark.slow  # every test here starts a server process

TEXTS = ["two cats on a couch", "a rocket launch at night"]


@pytest.fixture
def runtime(tmp_path):
    """A private runtime folder of the test's own; whatever server it started is stopped at the end."""
    folder = private(tmp_path / "run")
    yield folder
    stop_all(folder)


@pytest.fixture(scope="module")
def shared(tmp_path_factory, samples, full_checkpoint):
    """One automatic server for the module's comparisons (its runtime folder), and a copy of the samples."""
    root = tmp_path_factory.mktemp("auto")
    shutil.copytree(samples, root / "photos", ignore=shutil.ignore_patterns("*.md", "*.json"))
    folder = private(root / "run")
    yield root, folder
    stop_all(folder)


# -- the same output in both modes -----------------------------------------------------------------------------

COMMANDS = {
    "score": ["score", "{photos}", *TEXTS],
    "score-relative": ["score", "photos/cat.jpg", "-t", "a cat", "-k", "1"],
    "score-skips": ["score", "mixed", "a cat"],
    "fill-mask": ["fill-mask", "{photos}/cat.jpg", "photos/rocket.jpg", "a <mask> on a <mask>", "-k", "3"],
    "embed-image": ["embed", "photos", "--kind", "image"],
    "embed-text": ["embed", "-t", "a cat", "-t", "a dog", "-f", "jsonl"],
    "embed-cross": ["embed", "{photos}/coffee.jpg", "-t", "a cup", "--kind", "cross"],
    "index": ["index", "photos", "mixed", "--index", "{index}"],
    "retrieve": ["retrieve", "two cats", "photos", "--index", "{index}", "-r", "3"],
    "retrieve-csv": ["retrieve", "two cats", "{photos}", "--index", "{index}", "-r", "2", "-f", "csv"],
    "retrieve-like": ["retrieve", "photos/cat.jpg", "photos", "--index", "{index}", "-k", "3"],
    "retrieve-whole": ["retrieve", "-n", "--query", "a rocket", "--index", "{index}", "-k", "2"],
    "retrieve-texts": ["retrieve", "--image", "{photos}/cat.jpg", "-t", "a cat", "-t", "a rocket", "-t", "a cup"],
    "eval": ["eval", "captions.json", "--images", "photos", "--k-test", "2"],
    "eval-missing": ["eval", "captions-missing.json", "--images", "photos", "--k-test", "2"],
    "explain": ["explain", "photos/cat.jpg", "a cat", "--output-dir", "pictures", "--words"],
    "explain-layer": ["explain", "photos/cat.jpg", "a cat", "--layer", "99"],
    "fill-mask-no-mask": ["fill-mask", "photos/cat.jpg", "a cat"],
    "classify": ["classify", "photos", "mixed", "-l", "a cat,a rocket,a cup", "--template", "a {{}}", "-k", "2"],
    "classify-rerank": ["classify", "photos", "-l", "a cat,a rocket,a cup", "--method", "rerank", "-r", "2"],
    "eval-classification": [
        "eval",
        "--task",
        "classification",
        "classes",
        "--template",
        "a {{}}",
        "--confusion",
        "confusion.csv",
    ],  # fmt: skip
}


def prepared(root: Path) -> None:
    """The inputs the commands name: a folder with unreadable files, caption sets (one naming a missing image)."""
    mixed = root / "mixed"
    if not mixed.exists():
        mixed.mkdir()
        shutil.copy(root / "photos" / "cat.jpg", mixed / "cat.jpg")
        (mixed / "broken.jpg").write_text("not a jpeg")
        (mixed / "empty.png").write_bytes(b"")
        captions = [
            {"image": "cat.jpg", "caption": ["two cats on a couch", "cats resting"]},
            {"image": "rocket.jpg", "caption": ["a rocket launch at night"]},
            {"image": "coffee.jpg", "caption": ["a cup of coffee"]},
        ]
        (root / "captions.json").write_text(json.dumps(captions))
        missing = [*captions, {"image": "gone.jpg", "caption": ["nothing"]}]
        (root / "captions-missing.json").write_text(json.dumps(missing))
        for name in ("cat", "rocket", "coffee"):  # an ImageFolder
            (root / "classes" / name).mkdir(parents=True)
            shutil.copy(root / "photos" / f"{name}.jpg", root / "classes" / name / f"{name}.jpg")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_prints_through_the_automatic_server_what_it_prints_in_process(
    bt, shared, full_checkpoint, monkeypatch, name
):
    """Byte for byte on stdout and stderr, and the same exit code (names as typed, relative paths too)."""
    root, runtime = shared
    prepared(root)
    monkeypatch.chdir(root)
    runs = {}
    for mode, env in (("local", {}), ("auto", auto_env(runtime))):
        index = root / f"{name}-{mode}.sqlite"
        args = [a.format(photos=root / "photos", index=index) for a in COMMANDS[name]]
        if name == "retrieve-whole":  # (an index to search as a whole: built first)
            bt("index", "photos", "--index", index, "-m", full_checkpoint, env=env)
        fmt = [] if "-f" in args else ["-f", "json"]
        result = bt(*args, "-m", full_checkpoint, *fmt, env=env)
        pictures = sorted((p.name, p.read_bytes()) for p in (root / "pictures").glob("*")) if name == "explain" else []
        shutil.rmtree(root / "pictures", ignore_errors=True)
        runs[mode] = result, result.stderr.replace(str(index), "{index}"), pictures
    (local, local_err, local_pictures), (auto, auto_err, auto_pictures) = runs["local"], runs["auto"]
    assert auto.code == local.code, auto.stderr
    if name.startswith("eval"):  # (the seconds it took are the one field that differs)
        untimed = [{k: v for k, v in json.loads(r.stdout).items() if k != "seconds"} for r in (auto, local)]
        assert untimed[0] == untimed[1]
    else:
        assert auto.stdout == local.stdout
    assert auto_err == local_err
    assert auto_pictures == local_pictures
    assert "running in this process" not in auto.stderr  # (it did run on the server)
    failing = {"score-skips": 3, "index": 3, "classify": 3, "eval-missing": 3}
    failing |= {"explain-layer": 1, "fill-mask-no-mask": 1}
    assert local.code == failing.get(name, 0), local.stderr


def test_int8_and_fast_decoding_run_on_the_server_as_in_process(bt, runtime, samples, full_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    options = ["-m", full_checkpoint, "--dtype", "int8", "--fast-decode", "-f", "json"]
    cache = {"BT_INT8_CACHE": str(tmp_path / "int8")}
    for command in (["score", samples / "cat.jpg", *TEXTS], ["embed", samples / "rocket.jpg", "--kind", "image"]):
        local = bt(*command, *options, env=cache)
        auto = bt(*command, *options, env=auto_env(runtime, **cache))
        assert local.code == auto.code == 0 and auto.stdout == local.stdout, auto.stderr
        assert "running in this process" not in auto.stderr
    assert autoserver.status(place(runtime)).models == [str(full_checkpoint)]
    (pid,) = server_pids(place(runtime).socket)
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"--fast-decode" in command and command[command.index(b"--dtype") + 1] == b"int8"


def test_the_server_runs_them_with_its_models_loaded_and_reports_itself(bt, shared, full_checkpoint):
    root, runtime = shared
    bt("score", root / "photos" / "cat.jpg", "a cat", "-m", full_checkpoint, env=auto_env(runtime))
    before = autoserver.status(place(runtime)).cancelled
    for _ in range(3):  # (requests that end well are not counted as cancelled)
        bt("score", root / "photos" / "cat.jpg", "a cat", "-m", full_checkpoint, env=auto_env(runtime))
    result = bt("serve", "--status", "-f", "json", env={"XDG_RUNTIME_DIR": str(runtime)})
    status = json.loads(result.stdout)
    assert status["cancelled"] == before
    assert status["models"] == [str(full_checkpoint)] and status["pid"] in server_pids(place(runtime).socket)
    assert status["socket"] == str(place(runtime).socket) and status["rss_mb"] > 0 and status["idle_exit_s"] == 600
    # Private: the folder 0700, the socket 0600 (no other user can connect).
    assert stat.S_IMODE(os.stat(runtime / "bt").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(place(runtime).socket).st_mode) == 0o600


def test_the_client_imports_neither_torch_nor_transformers(shared, full_checkpoint):
    root, runtime = shared
    env = {**os.environ, **{k: v for k, v in BT_ENV.items() if v}, **auto_env(runtime)}
    args = ["score", root / "photos" / "cat.jpg", "a cat", "-m", full_checkpoint, "-f", "json"]
    result = subprocess.run([sys.executable, "-c", CHECK_IMPORTS, *map(str, args)], capture_output=True, text=True,
                            env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["text"] == "a cat"
    assert result.stderr.rstrip().endswith("HEAVY=") and "running in this process" not in result.stderr


def test_progress_reaches_the_client_as_in_process(shared, full_checkpoint, monkeypatch):
    """The same bars, totals and counts from a server's work as from the same work in process."""
    from bridgetower_cli.backend import Local, ModelOptions, Remote
    from bridgetower_cli.operations import Refresh
    from bridgetower_cli.records import Outcome, Reporter

    class Recording(Reporter):
        def __init__(self):
            self.bars = []

        def progress(self, total, description):
            import contextlib

            bar = [description, total, 0]
            self.bars.append(bar)

            @contextlib.contextmanager
            def counting():
                yield lambda n=1: bar.__setitem__(2, bar[2] + n)

            return counting()

    root, runtime = shared
    options = ModelOptions(str(full_checkpoint), device=DEVICE, dtype="float32")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    client = autoserver.connect(autoserver.ServerOptions(DEVICE, "float32"))
    reports = {}
    for mode, backend in (("local", Local(options)), ("auto", Remote(options, client))):
        photos = [str(root / "photos")]
        request = Refresh(photos, root / f"progress-{mode}.sqlite")
        reporter = Recording()
        backend.run(request, Outcome(), reporter)
        reports[mode] = reporter.bars
    assert reports["auto"] == reports["local"] == [["hashing new and changed files", 5, 5], ["indexing images", 5, 5]]


def test_ctrl_c_during_an_index_says_what_was_indexed_as_in_process(runtime, samples, full_checkpoint, monkeypatch):
    """Ctrl-C as the second batch of an index refresh is counted (the reporter's advance raises it, so the moment is
    the same in both modes, whatever the machine's load): the same Interrupted, word for word, in process and
    through the automatic server."""
    import contextlib

    from bridgetower_cli.backend import Local, ModelOptions, Remote
    from bridgetower_cli.errors import Interrupted
    from bridgetower_cli.operations import Refresh
    from bridgetower_cli.records import Outcome, Reporter

    class CtrlC(Reporter):
        def progress(self, total, description):
            seen = [0]

            def advance(n=1):
                seen[0] += n
                if seen[0] >= 4 and description == Interrupted.INDEXING:
                    raise KeyboardInterrupt

            return contextlib.nullcontext(advance)

    options = ModelOptions(str(full_checkpoint), device=DEVICE, dtype="float32", batch_size=2)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    client = autoserver.connect(autoserver.ServerOptions(DEVICE, "float32", batch_size=2))
    said = {}
    for mode, backend in (("local", Local(options)), ("auto", Remote(options, client))):
        with pytest.raises(Interrupted) as stopped:
            backend.run(Refresh([str(samples)], runtime / f"{mode}.sqlite"), Outcome(), CtrlC())
        said[mode] = (str(stopped.value), stopped.value.exit_code)
    assert said["auto"] == said["local"] == ("interrupted: 4 of 5 images indexed; run again to resume", 130)


def test_ctrl_c_on_the_client_stops_the_work_on_the_server(bt, shared, full_checkpoint, samples, tmp_path):
    """A score (one image x 2,000 texts) interrupted while the server runs it: the client ends with 130 and the
    server cancels the request (it stops at its next step, and keeps serving). The image is a URL (one's own server
    reads URLs as bt in process does) whose answer the test holds until the client is gone: the signal comes while
    the server's work waits on it, past its texts, so that work cannot end first whatever the machine's load. The
    server is started and its model loaded before (a cold start is no part of it)."""
    root, runtime = shared
    warm = bt("score", root / "photos" / "cat.jpg", "a cat", "-m", full_checkpoint, env=auto_env(runtime))
    assert warm.code == 0 and str(full_checkpoint) in autoserver.status(place(runtime)).models, warm.stderr
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"caption number {k} of a cat\n" for k in range(2_000)))
    env = {**os.environ, **{k: v for k, v in BT_ENV.items() if v}, **auto_env(runtime)}
    cancelled = autoserver.status(place(runtime)).cancelled
    with held_answer((samples / "cat.jpg").read_bytes()) as (url, asked, _):
        args = ["score", url, "--texts-file", texts, "-m", full_checkpoint, "-f", "json"]
        client = subprocess.Popen([sys.executable, "-m", "bridgetower_cli", *map(str, args)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert asked.wait(120), "nobody asked for the image"
            status = autoserver.status(place(runtime))
            assert status is not None and status.requests == 1, "the server is not the one reading it"
            client.send_signal(signal.SIGINT)
            _, stderr = client.communicate(timeout=30)
        finally:
            client.kill()
    assert client.returncode == 130, stderr
    assert wait_until(lambda: autoserver.status(place(runtime)).requests == 0, 30)
    assert autoserver.status(place(runtime)).cancelled == cancelled + 1


def test_the_python_api_uses_the_automatic_server_too(shared, full_checkpoint, monkeypatch):
    """Paths, PIL images and bytes alike, the records equal in process; no warning (it did reach the server)."""
    import warnings

    from PIL import Image

    import bridgetower_cli as bt

    root, runtime = shared
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    cat = root / "photos" / "cat.jpg"
    images = [str(cat), Image.open(cat), cat.read_bytes()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = bt.load(str(full_checkpoint), device=DEVICE, dtype="float32", server="auto").score(images, TEXTS)
    local = bt.load(str(full_checkpoint), device=DEVICE, dtype="float32").score(images, TEXTS)
    assert [r.to_dict() for r in auto] == [r.to_dict() for r in local] and len(auto) == 6
    assert str(full_checkpoint) in autoserver.status(place(runtime)).models


# -- starting, reusing, replacing, stopping ---------------------------------------------------------------------
