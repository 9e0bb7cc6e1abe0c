"""The search page (`bt serve`, `/`), end to end in a real browser: Playwright driving the system Chromium. The hits,
scores and maps it shows are those of `bt retrieve`, `bt score` and `bt explain` on the same photos and checkpoint."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import requests
from pages import MARKS, Served, browser, opened, page, settings, sync_api, until  # noqa: F401  (fixtures, by name)
from PIL import Image

from bridgetower_cli.server.web import root_index

pytestmark = MARKS
KEY = "a-key-for-the-page-test"
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory, samples, full_checkpoint):
    """A server over a copy of the sample photos (its only root, indexed), the tiny checkpoint its model:
    (URL, photos, the server's index folder)."""
    root = tmp_path_factory.mktemp("site")
    photos = root / "photos"
    shutil.copytree(samples, photos, ignore=shutil.ignore_patterns("*.md", "*.json"))
    served = Served(settings(full_checkpoint, [photos], root / "indexes"))
    body = {
        "model": str(full_checkpoint),
        "sources": [str(photos.resolve())],
        "index": root_index(str(photos.resolve())),
    }
    assert requests.post(served.url + "/v1/index", json=body, timeout=300).status_code == 200
    yield served.url, photos.resolve(), root / "indexes"
    served.stop()


def loaded(page, url: str) -> None:
    page.goto(url)
    sync_api.expect(page.locator("#status")).to_contain_text("indexed", timeout=60_000)


def searched(page, url: str, query: str) -> list[str]:
    loaded(page, url)
    page.fill("#query", query)
    page.press("#query", "Enter")
    until(page, "document.querySelector('#chip-text').textContent.includes('" + query + "') && "
                "document.querySelector('#results').getAttribute('aria-busy') === 'false' && "
                "document.querySelector('.card')")  # fmt: skip
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
    if os.environ.get("BT_SCREENSHOTS") == "1":  # (docs/'s screenshots, made by the tests)
        page.screenshot(path=str(DOCS / "search-page.png"))


def test_a_dropped_image_shows_its_neighbours(bt, site, page, samples, full_checkpoint):
    url, photos, _ = site
    searched(page, url, "warm up")  # (the index exists after the first search)
    page.set_input_files("#picker", str(samples / "rocket.jpg"))
    until(page, "document.querySelector('#chip-text').textContent === 'like rocket.jpg' && "
                "document.querySelector('#results').getAttribute('aria-busy') === 'false' && "
                "document.querySelector('.card')")  # fmt: skip
    assert page.input_value("#query") == "" and page.is_visible("#chip-image")  # (the query shown is the photo)
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
    width, height = page.eval_on_selector("#overlay", "i => [i.naturalWidth, i.naturalHeight]")
    photo_width, photo_height = Image.open(first).size
    assert max(width, height) <= 1280 and abs(width / height - photo_width / photo_height) < 0.01
    boxes = page.evaluate(
        "['#overlay', '#large'].map(s => JSON.stringify(document.querySelector(s).getBoundingClientRect()))"
    )
    assert boxes[0] == boxes[1]  # (drawn over the photo itself)
    page.uncheck("#map-toggle")
    assert not page.is_visible("#overlay")
    page.click("summary:has-text('Fill in')")
    page.click("#mask-form button")
    page.wait_for_selector("#masks tbody tr")
    assert page.eval_on_selector_all("#masks tbody tr", "r => r.length") == 5


def test_the_keyboard_alone_searches_moves_opens_scores_and_closes(bt, site, page, full_checkpoint):
    url, _, _ = site
    loaded(page, url)
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "query"
    page.keyboard.type("a cup of coffee")
    page.keyboard.press("Enter")
    until(
        page, "document.querySelector('#chip-text').textContent.includes('coffee') && document.querySelector('.card')"
    )
    page.keyboard.press("ArrowDown")  # (from the search box into the grid)
    first, second = page.eval_on_selector_all(".card", "c => [c[0].dataset.path, c[1].dataset.path]")
    assert page.evaluate("document.activeElement.dataset.path") == first
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.path") == second
    page.keyboard.press("Enter")
    page.wait_for_selector("#viewer[open]")
    assert page.text_content("#viewer-path") == second
    for _ in range(10):  # Tab to the captions (the first field of the first tool)
        if page.evaluate("document.activeElement.id") == "captions":
            break
        page.keyboard.press("Tab")
    page.keyboard.press("Control+A")
    page.keyboard.type("a cup of coffee")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#scores tbody tr")
    expected = bt("score", second, "a cup of coffee", "-m", full_checkpoint, "-f", "json").json()[0]
    assert abs(float(page.text_content("#scores tbody td.num")) - expected["probability"]) <= 5e-5
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer:not([open])", state="attached")
    tab_stops = page.evaluate("[...document.querySelectorAll('input, button, select, textarea, [tabindex]')]"
                              ".filter(e => e.tabIndex >= 0 && !e.disabled && e.offsetParent === null && "
                              "!e.closest('dialog, [hidden]')).map(e => e.id)")  # fmt: skip
    assert tab_stops == []  # (no invisible tab stop: the hidden file input is out of the order)


def test_a_phone_wide_page_has_no_horizontal_scroll(site, browser, tmp_path):
    url, _, _ = site
    context = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2)
    page = context.new_page()
    searched(page, url, "a photo")
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    if os.environ.get("BT_SCREENSHOTS") == "1":  # (docs/'s screenshots, made by this test)
        page.screenshot(path=str(DOCS / "search-page-360.png"))
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    header = page.eval_on_selector("header", "h => h.getBoundingClientRect().height")
    assert header <= 120  # (the results start in the first screen)
    page.click(".card")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    context.close()


def test_the_page_is_its_own_asks_for_the_key_and_never_puts_it_in_a_url(site, browser, full_checkpoint, tmp_path):
    _, photos, _ = site
    served = Served(settings(full_checkpoint, [photos], tmp_path / "indexes", api_key=KEY))
    try:
        url = served.url
        answer = requests.get(url + "/", timeout=10)
        policy = answer.headers["content-security-policy"]
        assert answer.status_code == 200 and "script-src 'self'" in policy and "default-src 'none'" in policy
        assert "http" not in answer.text.split("<body>")[0].replace('"/static/', "")  # (no CDN, nothing external)
        assert requests.get(url + "/v1/library", timeout=10).status_code == 401
        assert requests.get(url + "/static/favicon.svg", timeout=10).status_code == 200  # (no 401 per load)
        context, page, errors = opened(browser)
        urls = []
        page.on("request", lambda request: urls.append(request.url))
        page.goto(url)
        page.wait_for_selector("#key:not([hidden])")
        page.fill("#query", "a cat")
        page.press("#query", "Enter")  # (before the key: said plainly, no page error)
        sync_api.expect(page.locator("#message")).to_have_text("Enter the server's API key first.")
        page.fill("#key-value", "not-the-key")
        page.press("#key-value", "Enter")
        sync_api.expect(page.locator("#key-message")).to_have_text("That key is not right.")
        page.fill("#key-value", KEY)
        page.press("#key-value", "Enter")
        sync_api.expect(page.locator("#build")).to_have_text("Build it (5 photos)", timeout=60_000)
        assert not page.is_visible("#key") and page.text_content("#key-message") == ""
        assert page.text_content("#message") == ""
        page.click("#build")
        sync_api.expect(page.locator("#status")).to_contain_text("indexed", timeout=120_000)
        page.fill("#query", "a cat")
        page.press("#query", "Enter")
        page.wait_for_selector(".card img[src^='blob:']")
        searched_paths = page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.path)")
        assert searched_paths and all(KEY not in u for u in urls)
        assert page.evaluate("sessionStorage.getItem('bt-key')") == KEY
        assert "favicon.ico" not in " ".join(urls) and not errors
        context.close()
    finally:
        served.stop()


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
    assert max(Image.open(io.BytesIO(first.content)).size) == 256
    tag = first.headers["etag"]
    again = requests.get(f"{url}/v1/thumbnail", params={"path": str(photos / "cat.jpg")},
                         headers={"If-None-Match": tag}, timeout=10)  # fmt: skip
    assert again.status_code == 304 and "max-age" in first.headers["cache-control"]
    assert len(list((indexes / "thumbnails" / "256").glob("*.jpg"))) >= 1
    library = requests.get(f"{url}/v1/library", timeout=10).json()
    assert [(f["root"], f["images"], f["photos"]) for f in library["folders"]] == [(str(photos), 5, 5)]
    assert str(indexes) not in json.dumps(library)  # (no server path in what the page shows)


def test_a_browse_says_as_many_photos_as_it_keeps(site, monkeypatch):
    """A folder of more photos than a list keeps: the browse's total is what /v1/hits can page through (else the
    page asks for pages past the end forever)."""
    from bridgetower_cli.server import hits

    url, photos, _ = site
    monkeypatch.setattr(hits, "KEPT_HITS", 3)  # (of 5 photos)
    answer = requests.post(f"{url}/v1/browse", json={"root": str(photos), "top_k": 2}, timeout=30).json()
    kept = requests.get(f"{url}/v1/hits/{answer['meta']['hits']}", params={"offset": 2}, timeout=30).json()
    assert answer["meta"]["total"] == kept["total"] == 3 and len(kept["records"]) == 1
