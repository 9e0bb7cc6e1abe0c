"""Cancellation that reaches every loop: a request's token, set for the thread doing its work, is checked by the
library's long loops (folder walks, hashing, reading and decoding images, model calls), so a client that went away,
a deadline that passed or a server that stops ends the work at the next step, not only at the next model call."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from .errors import Cancelled, DeadlineExceeded


class CancelToken:
    """Whether a piece of work should stop, and why."""

    def __init__(self, timeout_s: float | None = None):
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.reason: Cancelled | None = None

    def cancel(self, reason: Cancelled) -> None:
        self.reason = self.reason or reason

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def check(self) -> None:
        """Raise the reason to stop, if there is one."""
        if self.reason is None and self.expired:
            self.reason = DeadlineExceeded("the request ran past its deadline", "send less, or raise --request-timeout")
        if self.reason is not None:
            raise self.reason


_local = threading.local()


@contextlib.contextmanager
def bound(local: threading.local, name: str, value) -> Iterator[None]:
    """``local.<name>`` set to ``value`` for this thread while the block runs (what it was before, after)."""
    previous = getattr(local, name, None)
    setattr(local, name, value)
    try:
        yield
    finally:
        setattr(local, name, previous)


def watching(token: CancelToken | None):
    """Make ``token`` the one this thread's work checks."""
    return bound(_local, "token", token)


def current() -> CancelToken | None:
    """The token this thread's work checks (a thread working for another passes it on with ``watching``)."""
    return getattr(_local, "token", None)


def check() -> None:
    """Stop here if this thread's work was cancelled (nothing to do outside a server's request)."""
    token = current()
    if token is not None:
        token.check()
