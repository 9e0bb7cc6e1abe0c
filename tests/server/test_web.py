"""The search page (`bt serve`, `/`), end to end in a real browser: Playwright driving the system Chromium. The hits,
scores and maps it shows are those of `bt retrieve`, `bt score` and `bt explain` on the same photos and checkpoint."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import DEVICE
from PIL import Image

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (apt-get install chromium)"),
]

import uvicorn  # noqa: E402

from bridgetower_cli.server import Settings, create_app  # noqa: E402
from bridgetower_cli.server.web import root_index  # noqa: E402

KEY = "a-key-for-the-page-test"


def serve(settings: Settings):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture(scope="module")
def site(tmp_path_factory, samples, full_checkpoint):
    """A server over a copy of the sample photos (its only root), the tiny checkpoint its model: (URL, photos)."""
    root = tmp_path_factory.mktemp("site")
    photos = root / "photos"
    shutil.copytree(samples, photos, ignore=shutil.ignore_patterns("*.md", "*.json"))
    settings = Settings(models=[str(full_checkpoint)], device=DEVICE, dtype="float32", allow_paths=[photos.resolve()],
                        index_dir=root / "indexes")  # fmt: skip
    server, thread, url = serve(settings)
    yield url, photos.resolve(), root / "indexes"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


def until(page, script: str, timeout_s: float = 60.0):
    """Poll ``script`` in the page until it is truthy (Playwright's wait_for_function evaluates strings, which the
    page's Content-Security-Policy rightly forbids)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = page.evaluate(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"never true: {script}")


def loaded(page, url: str) -> None:
    page.goto(url)
    sync_api.expect(page.locator("#status")).to_contain_text("images", timeout=60_000)


def searched(page, url: str, query: str) -> list[str]:
    loaded(page, url)
    page.fill("#query", query)
    page.press("#query", "Enter")
    page.wait_for_selector(".card")
    return page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.path)")


def index_of(site) -> Path:
    url, photos, indexes = site
    return indexes / f"{root_index(str(photos))}.sqlite"


def test_a_text_query_shows_the_hits_of_bt_retrieve_in_order(bt, site, page, full_checkpoint):
    url, photos, _ = site
    shown = searched(page, url, "two cats on a couch")
    assert not page.is_visible("#key")  # (no key asked of a server without one)
    expected = bt("retrieve", "two cats on a couch", photos, "-n", "--index", index_of(site), "-k", "24", "-r", "5",
                  "-m", full_checkpoint, "-f", "json").json()  # fmt: skip
    assert shown == [hit["image"] for hit in expected] and len(shown) == 5
    badges = page.eval_on_selector_all(".card .badge", "b => b.map(x => x.textContent)")
    assert len(badges) == 5 and all(b.startswith("match 0.") for b in badges)  # (all five reranked by ITM)
    alts = page.eval_on_selector_all(".card img", "i => i.map(x => x.alt)")
    assert alts == [Path(p).name for p in shown]
    until(page, "[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)")


def test_a_dropped_image_shows_its_neighbours(bt, site, page, samples, full_checkpoint):
    url, photos, _ = site
    searched(page, url, "warm up")  # (the index exists after the first search)
    page.set_input_files("#picker", str(samples / "rocket.jpg"))
    busy = "document.querySelector('#results').getAttribute('aria-busy')"
    until(
        page,
        f"{busy} === 'false' && document.querySelector('.card') && !document.querySelector('#message').textContent",
    )
    shown = page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.path)")
    expected = bt("retrieve", "--like", samples / "rocket.jpg", photos, "-n", "--index", index_of(site), "-k", "24",
                  "-m", full_checkpoint, "-f", "json").json()  # fmt: skip
    assert shown == [hit["image"] for hit in expected] and shown[0] == str(photos / "rocket.jpg")


def test_a_result_opens_with_its_path_its_scores_and_its_map(bt, site, page, full_checkpoint):
    url, photos, _ = site
    first = searched(page, url, "a rocket launch")[0]
    page.click(".card")
    assert page.is_visible("#viewer") and page.text_content("#viewer-path") == first
    page.fill("#captions", "a rocket launch\na cup of coffee")
    page.click("#score-form button")
    page.wait_for_selector("#scores tbody tr")
    rows = page.eval_on_selector_all("#scores tbody tr", "r => r.map(x => [...x.cells].map(c => c.textContent))")
    expected = bt("score", first, "a rocket launch", "a cup of coffee", "-m", full_checkpoint, "-f", "json").json()
    assert [r[0] for r in rows] == [e["text"] for e in expected]
    assert all(abs(float(r[1]) - e["probability"]) <= 5e-5 for r, e in zip(rows, expected))
    page.click("summary:has-text('Explain')")
    page.fill("#explain-text", "a rocket")
    page.click("#explain-form button")
    page.wait_for_selector("#overlay:not([hidden])")
    until(page, "document.querySelector('#overlay').naturalWidth > 0")
    size = page.eval_on_selector("#overlay", "i => [i.naturalWidth, i.naturalHeight]")
    assert size == list(Image.open(first).size)  # (the map drawn over the photo, at the photo's size)
    page.click("summary:has-text('Fill in')")
    page.click("#mask-form button")
    page.wait_for_selector("#masks tbody tr")
    assert page.eval_on_selector_all("#masks tbody tr", "r => r.length") == 5


def test_the_keyboard_alone_searches_moves_opens_and_closes(site, page):
    url, _, _ = site
    loaded(page, url)
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "query"
    page.keyboard.type("a cup of coffee")
    page.keyboard.press("Enter")
    page.wait_for_selector(".card")
    page.focus(".card")
    page.keyboard.press("ArrowRight")
    second = page.eval_on_selector_all(".card", "c => c[1].dataset.path")
    assert page.evaluate("document.activeElement.dataset.path") == second
    page.keyboard.press("Enter")
    page.wait_for_selector("#viewer[open]")
    assert page.text_content("#viewer-path") == second
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer:not([open])", state="attached")


def test_a_phone_wide_page_has_no_horizontal_scroll(site, browser, tmp_path):
    url, _, _ = site
    context = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2)
    page = context.new_page()
    searched(page, url, "a photo")
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    page.click(".card")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    context.close()


def test_the_page_is_its_own_asks_for_the_key_and_never_puts_it_in_a_url(site, browser, full_checkpoint, tmp_path):
    _, photos, _ = site
    keyed = Settings(models=[str(full_checkpoint)], device=DEVICE, dtype="float32", allow_paths=[photos],
                     index_dir=tmp_path / "indexes", api_key=KEY)  # fmt: skip
    server, thread, url = serve(keyed)
    try:
        answer = requests.get(url + "/", timeout=10)
        policy = answer.headers["content-security-policy"]
        assert answer.status_code == 200 and "script-src 'self'" in policy and "default-src 'none'" in policy
        assert "http" not in answer.text.split("<body>")[0].replace('"/static/', "")  # (no CDN, nothing external)
        assert requests.get(url + "/v1/library", timeout=10).status_code == 401
        context = browser.new_context()
        page = context.new_page()
        urls = []
        page.on("request", lambda request: urls.append(request.url))
        page.goto(url)
        page.wait_for_selector("#key:not([hidden])")
        page.fill("#key-value", KEY)
        page.press("#key-value", "Enter")
        sync_api.expect(page.locator("#status")).to_contain_text("images", timeout=60_000)
        page.fill("#query", "a cat")
        page.press("#query", "Enter")
        page.wait_for_selector(".card img[src^='blob:']")
        searched_paths = page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.path)")
        assert searched_paths and all(KEY not in u for u in urls)
        assert page.evaluate("sessionStorage.getItem('bt-key')") == KEY
        context.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_thumbnails_come_from_the_roots_only_and_are_cached(site, tmp_path):
    url, photos, indexes = site
    outside = tmp_path / "outside.jpg"
    shutil.copy(photos / "cat.jpg", outside)
    refused = requests.get(f"{url}/v1/thumbnail", params={"path": str(outside)}, timeout=10)
    assert refused.status_code == 403
    link = photos / "link-out.jpg"
    link.symlink_to(outside)
    try:
        assert requests.get(f"{url}/v1/thumbnail", params={"path": str(link)}, timeout=10).status_code == 403
    finally:
        link.unlink()
    first = requests.get(f"{url}/v1/thumbnail", params={"path": str(photos / "cat.jpg")}, timeout=30)
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert max(Image.open(__import__("io").BytesIO(first.content)).size) == 256
    tag = first.headers["etag"]
    again = requests.get(f"{url}/v1/thumbnail", params={"path": str(photos / "cat.jpg")},
                         headers={"If-None-Match": tag}, timeout=10)  # fmt: skip
    assert again.status_code == 304 and "max-age" in first.headers["cache-control"]
    assert len(list((indexes / "thumbnails" / "256").glob("*.jpg"))) >= 1
    library = requests.get(f"{url}/v1/library", timeout=10).json()
    assert [f["root"] for f in library["folders"]] == [str(photos)] and json.dumps(library)
