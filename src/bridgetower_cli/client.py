"""The CLI as a client of ``bt serve``: over HTTP(S) (``--server URL``, env ``BT_SERVER``) or over the Unix socket of
the automatic server (``--server auto``). Records, skips, warnings and progress arrive as events while the server
makes them (NDJSON) and reach the same reporter and output module as in process. No torch, no transformers: httpx."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import BtError, InputError
from .reading import read_bytes
from .records import Outcome, Reporter
from .sources import ImageSource

DEFAULT_TIMEOUT_S = 660.0  # a little past the server's default request deadline (10 min), so its 504 comes first
SOCKET_HOST = "http://bt"  # the host name of requests over a Unix socket (any name serves)


@dataclass
class Client:
    """A bt server at ``url`` (http or https) with its API key, or on the Unix socket ``socket`` (the automatic
    server: one's ``own``, reading paths as bt in process does); ``timeout_s``: how long to wait for the server's
    next byte (env BT_TIMEOUT; it sends a heartbeat every few seconds while it works)."""

    url: str
    api_key: str | None = None
    timeout_s: float | None = None
    socket: str | None = None
    own: bool = False
    meta: dict = field(default_factory=dict)  # the last request's facts beside its records (explain's image size)

    def _session(self, connect_s: float = 10.0):
        import httpx

        timeout = httpx.Timeout(self.timeout_s or DEFAULT_TIMEOUT_S, connect=min(connect_s, self.timeout_s or 10.0))
        transport = httpx.HTTPTransport(uds=self.socket) if self.socket else None
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(transport=transport, timeout=timeout, headers=headers)

    @property
    def base(self) -> str:
        return SOCKET_HOST if self.socket else self.url.rstrip("/")

    def get(self, path: str, connect_s: float = 10.0) -> dict:
        """A small GET (status, health), as JSON."""
        import httpx

        try:
            with self._session(connect_s) as session:
                response = session.get(self.base + path)
        except httpx.HTTPError as error:
            raise _failure(self.url, error, self.timeout_s or DEFAULT_TIMEOUT_S) from None
        return self._checked(response, response.read())

    def stream(self, path: str, payload: dict, outcome: Outcome, reporter: Reporter) -> Iterator[dict]:
        """POST ``payload`` and yield each record (as a dict) as it arrives; the server's skips go to ``outcome``,
        its warnings, notes and progress to ``reporter``, its error is raised. Leaving early (Ctrl-C, a closed pipe)
        closes the connection, and the server stops the work at its next step."""
        import httpx

        self.meta = {}
        try:
            with self._session() as session, contextlib.ExitStack() as bars:
                headers = {"Accept": "application/x-ndjson"}
                with session.stream("POST", self.base + path, json=payload, headers=headers) as response:
                    if response.status_code >= 400 or "ndjson" not in response.headers.get("content-type", ""):
                        self._checked(response, response.read())
                        raise self._not_bt(response)
                    shown = _Shown(outcome, reporter, bars, self.meta)
                    for line in response.iter_lines():
                        if line:
                            yield from shown.event(self._event(line))
                            if shown.ended:
                                return
                    raise BtError(f"the bt server at {self.url} closed the connection mid-answer", "see its log")
        except httpx.HTTPError as error:
            raise _failure(self.url, error, self.timeout_s or DEFAULT_TIMEOUT_S) from None

    def _event(self, line: str) -> dict:
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            raise BtError(f"{self.url} is not a bt server (it sent {line[:40]!r})", "check --server / BT_SERVER")
        if event["event"] == "error":
            raise self._error(event.get("status", 500), event)
        return event

    def _checked(self, response, content: bytes) -> dict:
        """A JSON answer, or the error it carries (a non-bt server said so)."""
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise self._not_bt(response)
        if response.status_code >= 400:
            raise self._error(response.status_code, body)
        return body

    def _not_bt(self, response) -> BtError:
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        return BtError(
            f"{self.url} is not a bt server (it answered {response.status_code} with {kind})",
            "check the URL in --server / BT_SERVER",
        )

    def _error(self, status: int, body: dict) -> BtError:
        """A server's error as the CLI's: on one's own server word for word (as in process), else naming the
        server."""
        message = body.get("error") or f"status {status}"
        failure = BtError(message if self.own else f"the bt server at {self.url} answered {status}: {message}")
        failure.hint, failure.status = body.get("hint"), status
        failure.exit_code = body.get("exit_code") or 1
        return failure


class _Shown:
    """A request's events shown as the CLI shows them in process."""

    def __init__(self, outcome: Outcome, reporter: Reporter, bars: contextlib.ExitStack, meta: dict):
        self.outcome, self.reporter, self.bars, self.meta = outcome, reporter, bars, meta
        self.progress: dict = {}  # id -> [its context, advance, done so far]
        self.ended = False

    def event(self, event: dict) -> Iterator[dict]:
        kind = event["event"]
        if kind in ("record", "result"):
            yield event["record"]
        elif kind == "skip":
            self.outcome.skip(event["name"], event["reason"], self.reporter)
        elif kind == "warn":
            self.reporter.warn(event["message"], event.get("kind"))
        elif kind == "info":
            self.reporter.info(event["message"])
        elif kind == "progress":
            context = self.reporter.progress(event["total"], event["description"])
            self.progress[event["id"]] = [context, self.bars.enter_context(context), 0]
        elif kind == "advance" and event["id"] in self.progress:
            bar = self.progress[event["id"]]
            bar[1](event["done"] - bar[2])
            bar[2] = event["done"]
            if event.get("end"):
                bar[0].__exit__(None, None, None)
                del self.progress[event["id"]]
        elif kind == "meta":
            self.meta.update({key: value for key, value in event.items() if key != "event"})
        elif kind == "end":
            self.ended = True


def _failure(url: str, error, timeout_s: float) -> BtError:
    """A transport error as one line that names what failed: DNS, TLS, the connection, or the wait."""
    import ssl

    import httpx

    cause, seen = error, []
    while cause is not None and cause not in seen:
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(e) for e in seen)
    if any(isinstance(e, ssl.SSLError) for e in seen) or "SSL" in text or "TLS" in text:
        return BtError(f"the TLS handshake with {url} failed ({seen[-1]})", "is it https? check the certificate")
    if isinstance(error, httpx.ConnectTimeout):
        return BtError(f"no bt server accepts connections at {url} (connect timed out)", "check the host and port")
    if isinstance(error, httpx.TimeoutException):
        return BtError(
            f"no answer within {timeout_s:g} s from {url}", "raise --timeout (env BT_TIMEOUT), or send less at once"
        )
    if "Name or service not known" in text or "nodename nor servname" in text or "name resolution" in text:
        return BtError(f"cannot resolve the host of {url}", "check the host name in --server / BT_SERVER")
    if isinstance(error, httpx.ConnectError):
        return BtError(f"no bt server answers at {url}", "start one with `bt serve`, or unset BT_SERVER")
    if isinstance(error, httpx.RemoteProtocolError):
        return BtError(f"the bt server at {url} closed the connection mid-answer", "see its log")
    return BtError(f"the request to {url} failed: {type(error).__name__}", "is it a bt server?")


def sent_images(client: Client, sources: list[ImageSource], outcome: Outcome, reporter: Reporter) -> list[dict]:
    """The images as a request names them: by path or URL to one's own server (it reads them as bt in process
    would); else their bytes, base64 (an unreadable one skipped here, as in process)."""
    if client.own:
        return [{"name": s.name, "url": s.url} if s.is_url else {"name": s.name, "path": s.path} for s in sources]
    images = []
    for source in sources:
        try:
            data = read_bytes(source)
        except InputError as error:
            outcome.skip(source.name, error.message, reporter)
            continue
        images.append({"name": source.name, "data": base64.b64encode(data).decode("ascii")})
    return images
