"""Ranked hits kept for paging (the search page's scrolling): a query ranks once, its hits are kept a short time
under an unguessable id, and each later page is a slice of them, never a new ranking. Bounded: so many kept lists
(the least recently used goes first), so many hits in each, each list only for the key that made it."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import NotFound

KEPT_HITS = 10_000  # the most hits a query keeps (Search's own top-k bound)
KEPT_LISTS = 64  # the most lists kept at once, over every client
KEEP_S = 600.0  # how long a list unused is kept


@dataclass
class Kept:
    owner: str
    records: list[dict]
    used: float


class HitLists:
    """Kept lists of records (as the wire sends them), by id. Thread-safe: searches store from worker threads."""

    def __init__(self, lists: int = KEPT_LISTS, keep_s: float = KEEP_S, clock=time.monotonic):
        self.lists, self.keep_s, self.clock = lists, keep_s, clock
        self._kept: OrderedDict[str, Kept] = OrderedDict()
        self._lock = threading.Lock()
        self.ranked = 0  # rankings run for the page (a later page runs none: the tests count on it)

    def keep(self, owner: str, records: list[dict]) -> tuple[str, int]:
        """Keep ``records`` (the first ``KEPT_HITS``) for ``owner`` (a digest of the caller's key): their id, and how
        many were kept (what a page may count on)."""
        name, kept = secrets.token_urlsafe(16), records[:KEPT_HITS]
        with self._lock:
            self._expire()
            self._kept[name] = Kept(owner, kept, self.clock())
            while len(self._kept) > self.lists:
                self._kept.popitem(last=False)
        return name, len(kept)

    def page(self, owner: str, name: str, offset: int, limit: int) -> tuple[list[dict], int]:
        """Records ``offset`` to ``offset + limit`` of a kept list, and its length."""
        with self._lock:
            self._expire()
            kept = self._kept.get(name)
            if kept is None or not secrets.compare_digest(kept.owner, owner):
                raise NotFound("these results are no longer kept", "search again")
            kept.used = self.clock()
            self._kept.move_to_end(name)
            return kept.records[offset : offset + limit], len(kept.records)

    def _expire(self) -> None:
        now = self.clock()
        for name in [name for name, kept in self._kept.items() if now - kept.used > self.keep_s]:
            del self._kept[name]


def owner_of(authorization: str | None) -> str:
    """Whose a list is: a digest of the request's Authorization header (the same key sees the same lists)."""
    return hashlib.sha256((authorization or "").encode()).hexdigest()
