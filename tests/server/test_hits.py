"""Hits kept for paging (``server/hits.py``): a slice of one ranking, only for the key that made it, bounded in
number and in time."""

from __future__ import annotations

import pytest

from bridgetower_cli.errors import NotFound
from bridgetower_cli.server.hits import KEPT_HITS, HitLists, owner_of

pytest.importorskip("fastapi")


def records(count: int) -> list[dict]:
    return [{"rank": k + 1, "image": f"/photos/{k}.jpg"} for k in range(count)]


def test_a_page_is_a_slice_of_the_kept_ranking_and_the_total_is_its_length():
    hits = HitLists()
    name, kept = hits.keep(owner_of(None), records(60))
    assert kept == 60
    page, total = hits.page(owner_of(None), name, 24, 24)
    assert [r["rank"] for r in page] == list(range(25, 49)) and total == 60
    assert hits.page(owner_of(None), name, 48, 24)[0][-1]["rank"] == 60


def test_another_key_never_sees_a_list_and_an_unknown_id_is_404():
    hits = HitLists()
    name, _ = hits.keep(owner_of("Bearer one"), records(5))
    with pytest.raises(NotFound):
        hits.page(owner_of("Bearer two"), name, 0, 5)
    with pytest.raises(NotFound):
        hits.page(owner_of("Bearer one"), "no-such-id", 0, 5)
    assert len(name) >= 20  # (unguessable)


def test_lists_are_bounded_in_number_length_and_time():
    now = [0.0]
    hits = HitLists(lists=2, keep_s=60, clock=lambda: now[0])
    (first, _), (second, _) = hits.keep("o", records(3)), hits.keep("o", records(3))
    hits.page("o", first, 0, 1)  # (used: the least recently used is now the second)
    hits.keep("o", records(3))
    with pytest.raises(NotFound):
        hits.page("o", second, 0, 1)
    assert hits.page("o", first, 0, 1)[1] == 3
    name, kept = hits.keep("o", records(KEPT_HITS + 5))
    assert kept == hits.page("o", name, 0, 1)[1] == KEPT_HITS
    now[0] = 59.0
    assert hits.page("o", first, 0, 1)[1] == 3  # (used again: kept another minute)
    now[0] = 120.0
    with pytest.raises(NotFound):
        hits.page("o", first, 0, 1)
