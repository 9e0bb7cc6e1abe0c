"""`-f html`: one self-contained page of the hits, checked as HTML and in a real headless browser (Chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def page(bt, *args) -> str:
    result = bt(*args, "-f", "html")
    assert result.code == 0, result.stderr
    return result.stdout


def test_retrieve_page_is_self_contained(bt, full_checkpoint, samples, tmp_path):
    html = page(
        bt, "retrieve", "a cat & a <dog>", samples, "-m", full_checkpoint, "--index", tmp_path / "ix.sqlite", "-k", "3"
    )
    assert html.startswith("<!doctype html>") and "<h1>a cat &amp; a &lt;dog&gt;</h1>" in html
    sources = re.findall(r'<img src="([^"]*)"', html)
    assert len(sources) == 3 and all(s.startswith("data:image/jpeg;base64,") for s in sources)
    assert [int(r) for r in re.findall(r'data-rank="(\d+)"', html)] == [1, 2, 3]
    assert "probability" in html and "similarity" in html


def test_score_page_has_every_pair(bt, full_checkpoint, samples):
    html = page(bt, "score", samples / "cat.jpg", samples / "rocket.jpg", "a cat", "a rocket", "-m", full_checkpoint)
    assert html.count('<div class="card">') == 2 and html.count('class="bar"') == 4


def test_html_is_refused_where_it_shows_nothing(bt, full_checkpoint):
    result = bt("embed", "-t", "a cat", "-m", full_checkpoint, "-f", "html")
    assert result.code == 2 and "-f html is not a format of bt embed" in result.stderr
    assert result.stdout == ""


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")
def test_the_page_in_a_real_browser(bt, full_checkpoint, samples, tmp_path):
    html = page(bt, "retrieve", "a cat", samples, "-m", full_checkpoint, "--index", tmp_path / "ix.sqlite", "-k", "3")
    (tmp_path / "hits.html").write_text(html)
    shot = tmp_path / "hits.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1100,800",
            f"--screenshot={shot}",
            (tmp_path / "hits.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert pixels.shape == (800, 1100, 3)
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 40  # photos, not the page's greys and whites
    assert colourful.mean() > 0.05, "the thumbnails did not render"
    top = np.argmax(colourful.any(axis=1))
    assert 60 < top < 200  # below the heading, where the first row of cards starts
