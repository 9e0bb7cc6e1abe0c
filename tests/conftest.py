"""Shared fixtures: real-architecture checkpoints built once per session, sample images, and a CLI driver."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bridgetower_cli import records as r
from bridgetower_cli.backend import Backend, Local, located
from bridgetower_cli.cli import main
from bridgetower_cli.operations import operation_of
from bridgetower_cli.testing import build_checkpoint

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
# Where bt runs in the tests: the CPU unless BT_TEST_DEVICE says otherwise (the GPU check sets cuda), always fp32.
DEVICE = os.environ.get("BT_TEST_DEVICE", "cpu")
BT_ENV = {"BT_DEVICE": DEVICE, "BT_DTYPE": "float32", "BT_MODEL": None}


# Tests that build or load a checkpoint, or run bt in a subprocess, are slow: `pytest -m "not slow"` is the fast layer.
SLOW_FIXTURES = {"checkpoints", "full_checkpoint", "published"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints: every head, the ITM+MLM pair of the public -itm-mlm ones, ITC alone (what the stock
    contrastive class saves), and ones lacking heads."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "full": build_checkpoint(root / "full", "tiny", ("itm", "mlm", "itc")),
        "itm_mlm": build_checkpoint(root / "itm_mlm", "tiny", ("itm", "mlm"), seed=1),
        "mlm": build_checkpoint(root / "mlm", "tiny", ("mlm",), seed=2),
        "backbone": build_checkpoint(root / "backbone", "tiny", (), seed=3),
        "itc": build_checkpoint(root / "itc", "tiny", ("itc",), seed=4),
    }


# The four public checkpoints' layouts (see bridgetower_cli.testing): name -> (size, heads).
PUBLISHED = {
    "bridgetower-base": ("tiny", ()),
    "bridgetower-base-itm-mlm": ("tiny", ("itm", "mlm")),
    "bridgetower-large-itm-mlm": ("tiny-large", ("itm", "mlm")),
    "bridgetower-large-itm-mlm-itc": ("tiny-large", ("itm", "mlm", "itc")),
}


@pytest.fixture(scope="session")
def published(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints in the files of each public hub repo, as transformers 4.26-4.30 wrote them."""
    root = tmp_path_factory.mktemp("published")
    return {
        name: build_checkpoint(root / name, size, heads, seed=20 + k, layout="published")
        for k, (name, (size, heads)) in enumerate(PUBLISHED.items())
    }


@pytest.fixture(scope="session")
def full_checkpoint(checkpoints) -> Path:
    return checkpoints["full"]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def run_bt(*args: str, input: str | None = None, env: dict | None = None) -> Result:
    """Run ``bt`` in-process through its real entry point (``main``, the error boundary included)."""
    try:
        runner = CliRunner(mix_stderr=False)  # click < 8.2 mixes stderr into stdout unless told
    except TypeError:
        runner = CliRunner()
    with runner.isolation(input=input, env=BT_ENV | (env or {})) as streams:
        out, err = streams[0], streams[1]
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        return Result(code, out.getvalue().decode(), err.getvalue().decode())


@pytest.fixture
def bt():
    return run_bt


def wait_for_rows(process, index: Path, rows: int, timeout_s: float) -> int:
    """Poll ``index`` while ``process`` runs until it has committed at least ``rows`` images: how many it had."""
    import sqlite3

    committed, deadline = 0, time.monotonic() + timeout_s
    while committed < rows and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        if index.exists():
            try:
                with sqlite3.connect(index, timeout=5) as db:
                    committed = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            except sqlite3.OperationalError:
                continue
    return committed


@pytest.fixture
def server(samples):
    """A local HTTP server on 127.0.0.1: /cat.jpg, /page.html (text/html), /huge.jpg (declares 1 GiB),
    /stream.jpg (no length, 1 MiB), /silent.jpg (answers after 30 s), anything else 404."""
    jpeg = (samples / "cat.jpg").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/silent.jpg":
                time.sleep(30)
                return
            if self.path == "/stream.jpg":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                for _ in range(16):
                    self.wfile.write(b"\0" * 65536)
                return
            routes = {"/cat.jpg": (jpeg, "image/jpeg"), "/page.html": (b"<html></html>", "text/html")}
            if self.path == "/huge.jpg":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(2**30))
                self.end_headers()
                return
            if self.path not in routes:
                self.send_error(404)
                return
            body, kind = routes[self.path]
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# -- a fake model behind the backend interface (as llm's EmbedDemo): every command's parsing, rendering, exit codes
# and streaming tested in milliseconds, no weights -------------------------------------------------------------------


def _value(*parts: str) -> float:
    import hashlib

    return int(hashlib.sha256("|".join(parts).encode()).hexdigest()[:8], 16) / 2**32


class FakeBackend(Backend):
    """Deterministic records from names and texts; an image whose name holds "broken" is skipped, as an
    unreadable one is. ``calls`` records what each operation was asked."""

    def __init__(self, options):
        super().__init__(options)
        self.calls, self.produced = [], 0
        self.runtime = Local(options).runtime  # (index --check/--repair)

    def run(self, request, outcome, reporter):
        request = located(request, outcome, reporter)
        operation = operation_of(request)
        self.calls.append((operation.name, request))
        if operation.name == "explain":
            reporter.meta(image_size=64)
        return getattr(self, operation.name)(request, outcome, reporter)

    def in_process(self):
        return self

    def _readable(self, sources, outcome, reporter):
        for source in sources:
            if "broken" in source.name:
                outcome.skip(source.name, "damaged image (fake)", reporter)
            else:
                yield source

    def score(self, q, outcome, reporter):
        for source in self._readable(q.images, outcome, reporter):
            records = [r.ScoreRecord(source.name, t, 4 * _value(source.name, t) - 2, _value(t, source.name))
                       for t in q.texts]  # fmt: skip
            for record in sorted(records, key=lambda x: -x.probability)[: q.top_k]:
                self.produced += 1
                yield record

    def fill_mask(self, q, outcome, reporter):
        for source in self._readable(q.images, outcome, reporter):
            for text in q.texts:
                masks = [[r.Candidate(k, f"word{k}", 1 / (k + 2)) for k in range(q.top_k)]
                         for _ in range(text.count("<mask>"))]  # fmt: skip
                yield r.FillMaskRecord(source.name, text, text.replace("<mask>", "word0"), masks)

    def embed(self, q, outcome, reporter):
        model = self.options.model
        if q.kind == "text":
            for text in q.texts:
                yield r.EmbeddingRecord(None, text, "text", model, 4, [_value(text, str(k)) for k in range(4)])
            return
        for source in self._readable(q.images, outcome, reporter):
            for text in q.texts if q.kind == "cross" else [None]:
                vector = [_value(source.name, str(text), str(k)) for k in range(4)]
                yield r.EmbeddingRecord(source.name, text, q.kind, model, 4, vector)

    def rank_texts(self, q, outcome, reporter):
        ranked = sorted(q.texts, key=lambda t: -_value(q.image.name, t))[: q.top_k]
        return [r.RetrievalRecord(k + 1, None, t, _value(q.image.name, t)) for k, t in enumerate(ranked)]

    def search(self, q, outcome, reporter):
        names = [s.name for s in q.files] if q.specs else ["indexed/a.jpg", "indexed/b.jpg"]
        key = q.query if isinstance(q.query, str) else q.query.name
        ranked = sorted(names, key=lambda n: -_value(key, n))[: q.top_k]
        return [r.RetrievalRecord(k + 1, n, None, _value(key, n)) for k, n in enumerate(ranked)]

    def index(self, q, outcome, reporter):
        readable = list(self._readable(q.files, outcome, reporter))
        return r.RefreshStats(new=len(readable), failed=len(q.files) - len(readable))

    def evaluate(self, q, outcome, reporter):
        n = len(q.images)
        recalls = [100 * k / n for k in (1, 2, 3)]
        means = [sum(recalls) / 3] * 3
        return r.EvalRecord(*recalls, means[0], *recalls, *means[1:], n, len(q.texts), q.k_test, "fake", 0,
                            self.options.model, 0.0)  # fmt: skip

    def classify(self, q, outcome, reporter):
        for source in self._readable(q.images, outcome, reporter):
            scores = sorted(((_value(source.name, label), label) for label in q.labels), reverse=True)
            total = sum(score for score, _ in scores)
            for score, label in scores[: q.top_k]:
                yield r.LabelRecord(source.name, label, score / total, score)

    def evaluate_classification(self, q, outcome, reporter):
        n = len(q.classes)
        reporter.meta(confusion=[[int(i == j) for j in range(n)] for i in range(n)])
        recall = {label: 100.0 for label in q.classes}
        return r.ClassificationEvalRecord(100.0, 100.0, 100.0, len(q.images), n, q.method, len(q.templates),
                                          recall, 0.0)  # fmt: skip

    def check_index(self, q, outcome, reporter):
        """The real check (no model needed); a repair loads the checkpoint as in process."""
        from bridgetower_cli.tasks.maintenance import check_index

        runtime = self.runtime(reporter, ("itc",))[0] if q.repair else None
        return check_index(runtime, q, outcome, reporter, 8)

    def explain(self, q, outcome, reporter):
        for source in self._readable(q.images, outcome, reporter):
            for text in q.texts:
                grid = [[_value(source.name, text, str(i), str(j)) for j in range(4)] for i in range(4)]
                tokens = [r.TokenMap("w", grid)]
                yield r.ExplainRecord(source.name, text, q.layer or 0, _value(text), grid, tokens)


@pytest.fixture
def fake(monkeypatch):
    """Every model command runs on a FakeBackend (the last one made is ``fake.last``)."""
    from bridgetower_cli import backend

    made, fake_backend = [], FakeBackend

    def open_fake(options, server=None, api_key=None, timeout=None, warn=None):
        made.append(fake_backend(options))
        return made[-1]

    monkeypatch.setattr(backend, "open_backend", open_fake)
    return made
