"""Connections ``bt serve`` holds: uvicorn's HTTP/1.1 protocol with a deadline for each request's headers and a cap
on one client's open connections, so that clients that never finish a request (slowloris) cannot hold the server.
A connection is closed ``HEADERS_S`` after it opened or its last answer ended unless a request's headers arrived;
past ``PER_CLIENT`` connections from one address, the oldest of them still waiting for headers makes room (none
waiting: the new one is closed). So ``/health`` answers, from anywhere, whatever unfinished requests are held."""

from __future__ import annotations

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADERS_S = 10.0  # for a request's headers to arrive whole
PER_CLIENT = 64  # open connections from one address (a browser opens 6; a Unix socket's clients are not counted)

_by_address: dict[str, dict[GuardedH11, None]] = {}  # open connections by client address, oldest first


class GuardedH11(H11Protocol):
    """H11Protocol with a headers deadline and a per-client cap (see the module's docstring)."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._address = self.client[0] if self.client else None
        self._headers_timer = None
        self._await_headers()
        if self._address is None:
            return
        held = _by_address.setdefault(self._address, {})
        if len(held) >= PER_CLIENT:
            waiting = next((c for c in held if c._headers_timer is not None), None)  # (the oldest first)
            if waiting is None:
                transport.close()
                return
            del held[waiting]
            waiting.transport.close()
        held[self] = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._between_requests():
            self._await_headers()
        elif self._headers_timer is not None:  # (a request's headers are in: its body has the app's own deadline)
            self._headers_timer.cancel()
            self._headers_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_headers()

    def connection_lost(self, exc) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None
        held = _by_address.get(self._address, {})
        held.pop(self, None)
        if not held:
            _by_address.pop(self._address, None)
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _await_headers(self) -> None:
        if self._headers_timer is None:
            self._headers_timer = self.loop.call_later(HEADERS_S, self._headers_late)

    def _headers_late(self) -> None:
        self._headers_timer = None
        if self._between_requests():
            self.transport.close()


def uvicorn_config(app, graceful_timeout_s: float) -> uvicorn.Config:
    """How ``bt serve`` runs ``app`` under uvicorn. Connections are held within bounds here (``GuardedH11``),
    requests by the app (admitted by cost, 503 + Retry-After past --max-waiting): no connection count of uvicorn's
    turns /health away while others are held. uvicorn waits for the requests in flight a little longer than the app
    lets them run, so that a request cut at the graceful timeout still answers (503) before its connection closes."""
    return uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_timeout_s + 5, http=GuardedH11)
