"""``-f html``: one self-contained HTML page of the results (``retrieve`` hits, ``score`` pairs) with thumbnails
embedded as data URLs, so the page opens in any browser, offline, wherever it is moved."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from itertools import groupby
from typing import TextIO

from ..errors import BtError, InputError
from ..records import LabelRecord, RetrievalRecord, ScoreRecord

THUMBNAIL = 240  # pixels, the longer side

STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 24px; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; } p.meta { color: #666; margin: 0 0 20px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 16px; }
.card { background: #fff; border-radius: 10px; box-shadow: 0 1px 3px rgba(0,0,0,.15); padding: 10px; }
.frame { height: 200px; display: flex; align-items: center; justify-content: center; background: #222;
         border-radius: 6px; }
.frame img { max-width: 100%; max-height: 200px; width: auto; height: auto; }
.rank { font-weight: 700; font-size: 18px; } .name { word-break: break-all; font-size: 13px; color: #333; }
table { border-collapse: collapse; width: 100%; font-size: 13px; } td { padding: 2px 4px; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.bar { height: 6px; background: #2a9d8f; border-radius: 3px; }
"""


def thumbnail(name: str) -> str:
    """A data URL of the image, at most THUMBNAIL pixels wide or high; a URL stays a URL; '' when unreadable."""
    if "://" in name:
        return name
    from ..reading import load_image
    from ..sources import ImageSource

    try:
        image = load_image(ImageSource(name, path=name))
    except InputError:
        return ""
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def original(name: str) -> str:
    """Where a hit's original file is: its URL, or a file:// URL of its absolute path."""
    import os
    from pathlib import Path

    return name if "://" in name else Path(os.path.abspath(name)).as_uri()


def _framed(name: str) -> str:
    """A thumbnail (never larger than itself) linked to the original file; alt text the file's name."""
    alt = html.escape(name.rstrip("/").rsplit("/", 1)[-1])
    image = f'<img src="{html.escape(thumbnail(name))}" alt="{alt}">'
    return f'<a class="frame" href="{html.escape(original(name))}">{image}</a>'


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _retrieval_cards(records: Sequence[RetrievalRecord]) -> list[str]:
    cards = []
    for r in records:
        subject = r.image if r.image is not None else r.text
        picture = _framed(r.image) if r.image is not None else ""
        rows = [("similarity", r.similarity), ("logit", r.logit), ("probability", r.probability)]
        scores = "".join(
            f'<tr><td>{label}</td><td class="num">{_number(value)}</td></tr>'
            for label, value in rows
            if value is not None
        )
        cards.append(
            f'<div class="card" data-rank="{r.rank}">{picture}<div><span class="rank">#{r.rank}</span> '
            f'<span class="name">{html.escape(subject)}</span></div><table>{scores}</table></div>'
        )
    return cards


def _score_cards(records: Sequence, column: str = "logit") -> list[str]:
    """A card per image: its texts (or labels) with their match probability and ``column`` (logit or score)."""
    cards = []
    for image, group in groupby(records, key=lambda r: r.image):
        rows = "".join(
            f'<tr><td>{html.escape(getattr(r, "text", None) or r.label)}<div class="bar" '
            f'style="width:{100 * r.probability:.1f}%"></div></td>'
            f'<td class="num">{r.probability:.4f}</td><td class="num">{getattr(r, column):.4f}</td></tr>'
            for r in group
        )
        cards.append(
            f'<div class="card">{_framed(image)}<div class="name">'
            f"{html.escape(image)}</div><table><tr><td></td><td class=num>probability</td><td class=num>{column}</td>"
            f"</tr>{rows}</table></div>"
        )
    return cards


def write_html(records: list, stream: TextIO, title: str = "") -> None:
    if records and isinstance(records[0], RetrievalRecord):
        cards, what = _retrieval_cards(records), f"{len(records)} hits"
    elif records and isinstance(records[0], ScoreRecord):
        cards, what = _score_cards(records), f"{len(records)} image-text pairs"
    elif records and isinstance(records[0], LabelRecord):
        images = len({r.image for r in records})
        cards, what = _score_cards(records, "score"), f"{len(records)} labels of {images} images"
    elif not records:
        cards, what = [], "no results"
    else:
        raise BtError("-f html shows retrieve, score and classify results", "use -f json for these")
    heading = html.escape(title or "bt results")
    stream.write(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{heading}</title>'
        f'<meta name="viewport" content="width=device-width"><style>{STYLE}</style></head><body>'
        f'<h1>{heading}</h1><p class="meta">{what}, by bt</p><div class="grid">{"".join(cards)}</div></body></html>\n'
    )
