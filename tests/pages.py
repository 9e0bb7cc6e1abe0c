"""What the search page's tests share: a real server in a thread, a real Chromium (Playwright), a photo library of
distinct photos cut from the samples, and a poll of the page (no timed waits)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
pytest.importorskip("fastapi")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MARKS = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (apt-get install chromium)")]

from helpers import served  # noqa: E402

from bridgetower_cli.server import Settings, create_app  # noqa: E402


class Served:
    """A bt server (as ``bt serve`` runs it) on a free loopback port, in a thread; ``stop()`` ends it (the page then
    finds nobody)."""

    def __init__(self, settings: Settings):
        self._stack = contextlib.ExitStack()
        self.url = self._stack.enter_context(served(create_app(settings)))

    def stop(self) -> None:
        self._stack.close()


def library(folder: Path, samples: Path, count: int) -> Path:
    """``count`` distinct JPEGs cut from the samples (each its own crop and size), with modification times one
    minute apart, the first the oldest; the first one says (EXIF) it was taken in 2030: the newest by date taken."""
    folder.mkdir(parents=True)
    sources = sorted(p for p in samples.iterdir() if p.suffix in (".jpg", ".png"))
    for k in range(count):
        with Image.open(sources[k % len(sources)]) as image:
            image = image.convert("RGB")
            width, height = image.size
            cut = 0.02 * (k // len(sources))
            box = (int(width * cut), int(height * cut), int(width * (1 - cut / 2)), int(height * (1 - cut / 3)))
            path = folder / f"photo-{k:03d}.jpg"
            exif = Image.Exif()
            if k == 0:
                exif.get_ifd(0x8769)[36867] = "2030:01:02 03:04:05"  # DateTimeOriginal
            image.crop(box).save(path, quality=90, exif=exif)
        os.utime(path, (1_700_000_000 + 60 * k, 1_700_000_000 + 60 * k))
    return folder


def settings(model: Path, roots: list[Path], indexes: Path, **more) -> Settings:
    from conftest import DEVICE

    return Settings(models=[str(model)], device=DEVICE, dtype="float32", allow_paths=[r.resolve() for r in roots],
                    index_dir=indexes, **more)  # fmt: skip


def until(page, script: str, timeout_s: float = 60.0):
    """Poll ``script`` in the page until it is truthy (Playwright's wait_for_function evaluates strings, which the
    page's Content-Security-Policy rightly forbids)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = page.evaluate(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never true: {script}")


def settled(page) -> None:
    """Until the grid has an answer (cards, or a message) and is not busy."""
    until(page, "document.querySelector('#results').getAttribute('aria-busy') === 'false' && "
                "(document.querySelector('.card') || document.querySelector('#message').textContent)")  # fmt: skip


def shown(page) -> list[str]:
    return page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.path)")


def ranks(page) -> list[int]:
    return page.eval_on_selector_all(".card .name", "n => n.map(x => Number(x.textContent.split(' ')[0].slice(1)))")


def opened(browser, width: int = 1280, height: int = 900):
    """A new page in its own context (its own sessionStorage), and a list of the page's uncaught errors."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return context, page, errors


def build_index(page) -> None:
    """Click the page's Build button and wait for the library line that says the folder is indexed."""
    page.click("#build")
    sync_api.expect(page.locator("#status")).to_contain_text("indexed", timeout=120_000)


@pytest.fixture(scope="module")
def browser():
    """The system Chromium, driven by Playwright (a module's tests share it)."""
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A page of its own, 1280 x 900; no uncaught error in it, ever."""
    context, opened_page, errors = opened(browser)
    yield opened_page
    context.close()
    assert not errors, errors
