"""The search page as people keep it open (issue 33), in a real Chromium: a query made while another runs wins,
scrolling pages through one ranking (never a new one), a folder switch clears the grid, the library browses with no
query, and each error is said where its action was taken. Slow answers are made by holding a request in the
browser (Playwright's routing), never by waiting: each race is played in the same order every run."""

from __future__ import annotations

import base64
import io
import shutil
import time

import pytest
import requests
from pages import MARKS, Served, browser, library, opened, page, ranks, settings, settled, shown, sync_api, until  # noqa: F401  (fixtures, by name)
from PIL import Image

from bridgetower_cli.server.web import root_index

pytestmark = MARKS
PHOTOS = 60  # more than two pages of 24


@pytest.fixture(scope="module")
def site(tmp_path_factory, samples, full_checkpoint):
    """A server over two folders, both indexed through the page's own endpoint: 60 photos, and the 5 samples."""
    root = tmp_path_factory.mktemp("flow")
    many = library(root / "many", samples, PHOTOS).resolve()
    few = root / "few"
    shutil.copytree(samples, few, ignore=shutil.ignore_patterns("*.md", "*.json"))
    few = few.resolve()
    served = Served(settings(full_checkpoint, [many, few], root / "indexes"))
    for folder in (many, few):
        body = {"model": str(full_checkpoint), "sources": [str(folder)], "index": root_index(str(folder))}
        assert requests.post(served.url + "/v1/index", json=body, timeout=600).status_code == 200
    yield served.url, many, few, root / "indexes"
    served.stop()


def ready(page, url: str) -> None:
    page.goto(url)
    sync_api.expect(page.locator("#status")).to_contain_text("indexed", timeout=60_000)
    settled(page)


def held(page, pattern: str) -> list:
    """Requests to ``pattern`` held in the browser (the first one only; later ones go through)."""
    routes: list = []
    page.route(pattern, lambda route: routes.append(route) if not routes else route.continue_())
    return routes


def until_held(page, routes: list, timeout_s: float = 30.0) -> None:
    """Poll (letting Playwright handle its events) until a request is held."""
    deadline = time.monotonic() + timeout_s
    while not routes:
        assert time.monotonic() < deadline, "no request was held"
        page.wait_for_timeout(50)


def release(page, routes: list) -> None:
    """Let the held requests go on, then wait until each has ended (answered, or aborted by the page) and the page
    has had its turn to handle it."""
    ended: set = set()
    page.on("requestfinished", lambda request: ended.add(request.url))
    page.on("requestfailed", lambda request: ended.add(request.url))
    for route in routes:
        try:
            route.continue_()
        except Exception:  # (the page aborted it meanwhile, as it should)
            ended.add(route.request.url)
    for route in routes:
        until(page, f"{route.request.url in ended} || {bool(route.request.failure)}".lower())
    page.evaluate("new Promise(done => setTimeout(done, 100))")


def scroll_to_the_end(page, total: int) -> None:
    while (count := len(shown(page))) < total:  # (one count: the page may append its next page meanwhile)
        page.evaluate("document.querySelector('#more').scrollIntoView()")
        until(page, f"document.querySelectorAll('.card').length > {count}")


def rankings(url: str) -> int:
    return requests.get(url + "/v1/status", timeout=10).json()["rankings"]


def test_a_photo_picked_while_a_text_query_runs_wins_and_scrolls_through_its_own_ranking(
    bt, site, page, samples, full_checkpoint
):
    url, many, _, indexes = site
    assert len(list((indexes / "thumbnails" / "256").glob("*.jpg"))) >= PHOTOS  # (made while indexing)
    ready(page, url)
    slow = held(page, "**/v1/retrieve")
    page.fill("#query", "a long text query that is still running")
    page.press("#query", "Enter")
    until_held(page, slow)
    page.unroute("**/v1/retrieve")  # (the text query's request stays held: it is "running")
    page.set_input_files("#picker", str(samples / "rocket.jpg"))
    until(page, "document.querySelector('#chip-text').textContent === 'like rocket.jpg'")
    settled(page)
    release(page, slow)  # (the text query's answer, if any still comes, is not this query's)
    expected = bt("retrieve", "--like", samples / "rocket.jpg", many, "-n", "--index",
                  indexes / f"{root_index(str(many))}.sqlite", "-k", str(PHOTOS), "-m", full_checkpoint,
                  "-f", "json").json()  # fmt: skip
    first = shown(page)  # (a page or two: as many as fill the screen)
    assert len(first) >= 24 and first == [hit["image"] for hit in expected[: len(first)]]
    assert ranks(page) == list(range(1, len(first) + 1))
    before = rankings(url)
    scroll_to_the_end(page, PHOTOS)
    assert shown(page) == [hit["image"] for hit in expected] and ranks(page) == list(range(1, PHOTOS + 1))
    similarities = page.eval_on_selector_all(".card .numbers", "n => n.map(x => parseFloat(x.textContent.slice(11)))")
    assert all(a >= b for a, b in zip(similarities, similarities[1:]))  # (never rising while scrolling)
    assert rankings(url) == before  # (the later pages are slices of the one ranking)
    assert page.is_visible("#end")


def test_a_new_query_while_a_page_is_loading_shows_only_its_own_hits(bt, site, page, full_checkpoint):
    url, many, _, indexes = site
    ready(page, url)
    slow = held(page, "**/v1/hits/**")  # (the first query's next page, whenever the page asks for it)
    page.fill("#query", "a red cup")
    page.press("#query", "Enter")
    until(page, "document.querySelector('#chip-text').textContent.includes('red cup') && "
                "document.querySelectorAll('.card').length >= 24")  # fmt: skip
    page.evaluate("document.querySelector('#more').scrollIntoView()")
    until_held(page, slow)
    page.fill("#query", "a rocket at night")
    page.press("#query", "Enter")
    until(page, "document.querySelector('#chip-text').textContent.includes('rocket') && "
                "document.querySelector('#results').getAttribute('aria-busy') === 'false'")  # fmt: skip
    page.unroute("**/v1/hits/**")
    release(page, slow)  # (the first query's next page: not this query's)
    settled(page)
    expected = bt("retrieve", "a rocket at night", many, "-n", "--index", indexes / f"{root_index(str(many))}.sqlite",
                  "-k", str(PHOTOS), "-r", "5", "-m", full_checkpoint, "-f", "json").json()  # fmt: skip
    now = shown(page)
    assert len(now) >= 24 and now == [hit["image"] for hit in expected[: len(now)]]
    assert ranks(page) == list(range(1, len(now) + 1))


def test_switching_folders_clears_the_grid_and_runs_the_query_there(site, page):
    url, many, few, _ = site
    ready(page, url)
    page.fill("#query", "a cat")
    page.press("#query", "Enter")
    until(page, "document.querySelector('#chip-text').textContent.includes('a cat') && "
                "document.querySelectorAll('.card').length >= 24")  # fmt: skip
    page.select_option("#folder", label=str(few))
    until(page, "document.querySelector('#results').getAttribute('aria-busy') === 'false' && "
                "document.querySelectorAll('.card').length === 5")  # fmt: skip
    assert all(path.startswith(str(few) + "/") for path in shown(page))
    assert "a cat" in page.text_content("#chip-text")


def test_with_no_query_the_library_browses_newest_first_and_by_folder(site, page):
    url, many, _, _ = site
    ready(page, url)
    names = sorted(str(path) for path in many.iterdir())
    assert page.is_visible("#browse") and not page.is_visible("#chip")
    scroll_to_the_end(page, PHOTOS)
    # The library's photos were modified a minute apart, the last the newest; the first says it was taken in 2030.
    assert shown(page) == [names[0], *names[:0:-1]]
    assert page.text_content(".card .numbers") == "Jan 2, 2030"
    page.select_option("#order", "folder")
    until(page, "document.querySelectorAll('.card').length >= 24")
    scroll_to_the_end(page, PHOTOS)
    assert shown(page) == names and ranks(page) == list(range(1, PHOTOS + 1))
    page.fill("#query", "a cat")
    page.press("#query", "Enter")
    until(page, "document.querySelector('#chip-text').textContent.includes('a cat')")
    page.click("#clear")  # (the query cleared: browsing again)
    until(page, "!document.querySelector('#browse').hidden && document.querySelectorAll('.card').length >= 24")


def test_each_error_is_said_where_its_action_was_taken(site, browser, samples, full_checkpoint, tmp_path):
    url, _, few, _ = site
    context, page, errors = opened(browser)
    page.goto(url)
    page.select_option("#folder", label=str(few))
    until(page, "document.querySelectorAll('.card').length === 5")
    page.click(".card")
    page.click("summary:has-text('Fill in')")
    page.fill("#mask-text", "a photo of a cat")  # (no <mask>: the server refuses it)
    page.click("#mask-form button")
    sync_api.expect(page.locator("#mask-form + .error")).to_have_text("No text holds a <mask>.")
    assert page.text_content("#message") == "" and page.is_visible("#mask-form + .error")
    context.close()
    # A folder with no index yet: said in the page's words, with the count a build would index.
    fresh = tmp_path / "fresh"
    shutil.copytree(samples, fresh, ignore=shutil.ignore_patterns("*.md", "*.json"))
    served = Served(settings(full_checkpoint, [fresh], tmp_path / "indexes"))
    context, page, errors = opened(browser)
    try:
        page.goto(served.url)
        sync_api.expect(page.locator("#empty-text")).to_have_text("This folder has no index yet.")
        sync_api.expect(page.locator("#build")).to_have_text("Build it (5 photos)")
        page.fill("#query", "a cat")
        page.press("#query", "Enter")
        text = page.text_content("body")
        assert page.is_visible("#empty") and str(tmp_path / "indexes") not in text and "bt index" not in text
        # The server stopped: every action says so, plainly, where it was taken.
        served.stop()
        page.click("#build")
        unreachable = "The server is not reachable — is `bt serve` still running?"
        sync_api.expect(page.locator("#library-message")).to_have_text(unreachable)
        assert not errors, errors
    finally:
        context.close()
        served.stop()


def test_explain_on_a_27_megapixel_photo_draws_at_display_size(site, samples, full_checkpoint):
    url, _, few, _ = site
    photo = few / "large-27mp.jpg"
    Image.open(samples / "coffee.jpg").convert("RGB").resize((6000, 4500)).save(photo, quality=85)
    try:
        body = {"model": str(full_checkpoint), "images": [{"name": str(photo), "path": str(photo)}],
                "texts": ["a cup of coffee"], "pictures": True, "words": True}  # fmt: skip
        answer = requests.post(url + "/v1/explain", json=body, timeout=300)
        assert answer.status_code == 200, answer.text
        record = answer.json()["records"][0]
        png = base64.b64decode(record["picture"].split(",", 1)[1])
        picture = Image.open(io.BytesIO(png))
        assert picture.size == (1280, 960) and len(png) <= 2_000_000  # (was 6000 x 4500, 73.5 MB)
        words = [Image.open(io.BytesIO(base64.b64decode(t["picture"].split(",", 1)[1]))) for t in record["tokens"]]
        assert words and all(max(word.size) == 240 for word in words)
    finally:
        photo.unlink()


def test_hits_no_longer_kept_are_ranked_again_and_scrolling_goes_on(site, page):
    """The server restarted (or the tab was left ten minutes): the kept id is gone, and the next page comes from the
    query asked once more, never a dead end; a page with nothing more kept ends the grid (never a loop)."""
    url, many, _, _ = site
    ready(page, url)
    names = sorted(str(path) for path in many.iterdir())
    page.select_option("#order", "folder")
    until(page, "document.querySelectorAll('.card').length >= 24")
    gone = '{"error": "these results are no longer kept", "hint": "search again"}'
    answered: list = []
    page.route("**/v1/hits/**", lambda route: answered.append(route.request.url) or route.fulfill(
        status=404, content_type="application/json", body=gone) if not answered else route.continue_())  # fmt: skip
    scroll_to_the_end(page, PHOTOS)
    assert shown(page) == names and page.text_content("#message") == "" and page.is_visible("#end")
    page.unroute("**/v1/hits/**")
    page.route("**/v1/hits/**", lambda route: route.fulfill(content_type="application/json",
                                                          body='{"records": [], "total": 1000}'))  # fmt: skip
    page.select_option("#order", "date")
    until(page, "document.querySelectorAll('.card').length >= 24")
    page.evaluate("document.querySelector('#more').scrollIntoView()")
    until(page, "!document.querySelector('#end').hidden")


def test_a_photo_gone_since_it_was_indexed_is_said_by_each_tool_and_a_blank_query_browses(site, page):
    url, _, few, _ = site
    ready(page, url)
    page.fill("#query", "   ")
    page.press("#query", "Enter")
    until(page, "document.querySelector('#results').getAttribute('aria-busy') === 'false' && "
                "document.querySelectorAll('.card').length >= 24")  # fmt: skip
    assert page.is_visible("#browse") and not page.is_visible("#chip") and page.text_content("#message") == ""
    page.select_option("#folder", label=str(few))
    until(page, "document.querySelectorAll('.card').length === 5")
    photo = few / "coffee.jpg"
    page.click(f".card[data-path='{photo}']")
    photo.rename(few / "coffee.moved")
    try:
        page.fill("#captions", "a cup of coffee")
        page.click("#score-form button")
        sync_api.expect(page.locator("#score-form + .error")).to_contain_text("Cannot use coffee.jpg: ")
        page.click("summary:has-text('Explain')")
        page.fill("#explain-text", "a cup")
        page.click("#explain-form button")
        sync_api.expect(page.locator("#explain-form + .error")).to_contain_text("Cannot use coffee.jpg: ")
    finally:
        (few / "coffee.moved").rename(photo)


def test_a_server_error_never_shows_the_server_s_own_paths(site, browser, checkpoints):
    """The same indexes served with another model: refreshing says so, without the index's or the model's path."""
    url, _, few, indexes = site
    served = Served(settings(checkpoints["itc"], [few], indexes))
    context, page, errors = opened(browser)
    try:
        page.goto(served.url)
        sync_api.expect(page.locator("#status")).to_contain_text("indexed", timeout=60_000)
        page.click("#refresh")
        sync_api.expect(page.locator("#library-message")).to_contain_text("another model", timeout=60_000)
        said = page.text_content("#library-message")
        assert "(on the server)" in said and str(indexes) not in said and str(checkpoints["itc"]) not in said
        assert not errors, errors
    finally:
        context.close()
        served.stop()
