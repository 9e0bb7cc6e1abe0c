"""The CLI as a client of ``bt serve``: over HTTP(S) (``--server URL``, env ``BT_SERVER``) or over the Unix socket of
the automatic server (``--server auto``). Records, skips, warnings and progress arrive as events while the server
makes them (NDJSON) and reach the same reporter and output module as in process. No torch, no transformers: httpx
over HTTP(S), the socket module alone over the Unix socket."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .errors import BtError, InputError
from .reading import read_bytes
from .records import Outcome, Reporter
from .sources import ImageSource

DEFAULT_TIMEOUT_S = 660.0  # a little past the server's default request deadline (10 min), so its 504 comes first
MAX_LINE_BYTES = 16 * 2**20  # one event (a record) of an answer; bt's largest are a few hundred KiB
MAX_BODY_BYTES = 16 * 2**20  # a JSON answer (status, an error)


@dataclass
class Client:
    """A bt server at ``url`` (http or https) with its API key, or on the Unix socket ``socket`` (the automatic
    server: one's ``own``, reading paths as bt in process does); ``timeout_s``: how long to wait for the work to move
    (env BT_TIMEOUT; heartbeats keep the connection open, not the wait)."""

    url: str
    api_key: str | None = None
    timeout_s: float | None = None
    socket: str | None = None
    own: bool = False
    meta: dict = field(default_factory=dict)  # the last request's facts beside its records (explain's image size)
    shown: _Shown | None = field(default=None, repr=False)  # the last request's events, as shown

    def counted(self) -> tuple[str, int, int] | None:
        """(description, done, total) of the last request's progress bar open last, while it is open."""
        return self.shown.counted if self.shown is not None else None

    def get(self, path: str, connect_s: float = 10.0, read_s: float | None = None) -> dict:
        """A small GET (status, health), as JSON; ``read_s``: its own wait for the answer (a health probe's short)."""
        with self._exchange("GET", path, None, connect_s, read_s) as answer:
            return self._checked(answer, answer.read())

    def stream(self, path: str, payload: dict, outcome: Outcome, reporter: Reporter) -> Iterator[dict]:
        """POST ``payload`` and yield each record (as a dict) as it arrives; the server's skips go to ``outcome``,
        its warnings, notes and progress to ``reporter``, its error is raised. Leaving early (Ctrl-C, a closed pipe)
        closes the connection, and the server stops the work at its next step."""
        self.meta = {}
        with self._exchange("POST", path, payload) as answer, contextlib.ExitStack() as bars:
            if answer.status >= 400 or "ndjson" not in answer.kind:
                self._checked(answer, answer.read())
                raise self._not_bt(answer)
            shown = self.shown = _Shown(outcome, reporter, bars, self.meta)
            for line in answer.lines:
                if line:
                    event = self._event(line)
                    if event["event"] != "alive":  # (a heartbeat says the server lives, not that the work moves)
                        answer.lines.moved()
                    yield from shown.event(event)
                    if shown.ended:
                        return
            raise BtError(f"the bt server at {self.url} closed the connection mid-answer", "see its log")

    def _exchange(self, method: str, path: str, payload: dict | None, connect_s: float = 10.0, read_s=None):
        headers = {"Accept": "application/x-ndjson"} | (
            {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        )
        exchange = _over_socket if self.socket else _over_http
        return exchange(self, method, path, payload, headers, connect_s, read_s or self.timeout_s or DEFAULT_TIMEOUT_S)

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

    def _checked(self, answer: _Answer, content: bytes) -> dict:
        """A JSON answer, or the error it carries (a non-bt server said so)."""
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise self._not_bt(answer)
        if answer.status >= 400:
            raise self._error(answer.status, body)
        return body

    def _not_bt(self, answer: _Answer) -> BtError:
        kind = (answer.kind or "no content type").split(";")[0]
        return BtError(
            f"{self.url} is not a bt server (it answered {answer.status} with {kind})",
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


@dataclass
class _Answer:
    """A server's answer as it arrives: status, content type, its lines (one event each), or all of it (bounded)."""

    status: int
    kind: str
    lines: _Lines
    read: Callable[[], bytes]


class _Lines:
    """The lines of an answer from its chunks as they arrive, within bounds whatever the server sends: no line over
    ``MAX_LINE_BYTES``, and no more than ``wait_s`` between two events that move the work (``moved``): heartbeats
    or a trickle of bytes keep the connection, not the wait, alive."""

    def __init__(self, chunks: Iterator[bytes], url: str, wait_s: float):
        self.chunks, self.url, self.wait_s = chunks, url, wait_s
        self.moved()

    def moved(self) -> None:
        self.deadline = time.monotonic() + self.wait_s

    def __iter__(self) -> Iterator[str]:
        pending = bytearray()
        for chunk in self.chunks:
            pending += chunk
            while (end := pending.find(b"\n")) >= 0:
                line = pending[:end].decode("utf-8", "replace")
                del pending[: end + 1]
                yield line
            if len(pending) > MAX_LINE_BYTES:
                raise BtError(
                    f"the bt server at {self.url} sent a line over {MAX_LINE_BYTES // 2**20} MiB", "see its log"
                )
            if time.monotonic() > self.deadline:
                raise BtError(f"no answer within {self.wait_s:g} s from {self.url}", "raise --timeout (env BT_TIMEOUT)")
        if pending:
            yield pending.decode("utf-8", "replace")


def _bounded(chunks: Iterator[bytes], url: str) -> bytes:
    """A whole answer, refused past ``MAX_BODY_BYTES``."""
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BtError(f"the bt server at {url} sent an answer over {MAX_BODY_BYTES // 2**20} MiB", "see its log")
    return bytes(body)


@contextlib.contextmanager
def _over_http(client: Client, method: str, path: str, payload, headers: dict, connect_s: float, read_s: float):
    """An exchange over HTTP(S) (httpx: TLS, proxies, the system's certificates), transport errors named."""
    import httpx

    timeout = httpx.Timeout(read_s, connect=min(connect_s, client.timeout_s or 10.0))
    try:
        with httpx.Client(timeout=timeout) as session:
            url = client.url.rstrip("/") + path
            with session.stream(method, url, json=payload, headers=headers) as response:
                kind = response.headers.get("content-type", "")
                lines = _Lines(response.iter_bytes(), client.url, read_s)
                yield _Answer(response.status_code, kind, lines, lambda: _bounded(response.iter_bytes(), client.url))
    except httpx.HTTPError as error:
        raise _failure(client.url, error, read_s) from None


MAX_HEAD_LINE = 65536  # a status or header line of the automatic server's answer (as http.client bounds them)
MAX_HEADERS = 100


class _Malformed(Exception):
    """An answer on the socket that is not HTTP as bt's server speaks it; ``kind`` as http.client would name it."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


@contextlib.contextmanager
def _over_socket(client: Client, method: str, path: str, payload, headers: dict, connect_s: float, read_s: float):
    """An exchange over the automatic server's Unix socket, in HTTP/1.1 spoken with the socket module (http.client
    and httpx each take longer to import than such a call takes), transport errors named."""

    def failure(error: Exception) -> BtError:
        if isinstance(error, TimeoutError):
            return BtError(f"no answer within {read_s:g} s from {client.url}", "raise --timeout (env BT_TIMEOUT)")
        if isinstance(error, (FileNotFoundError, ConnectionRefusedError)):
            return BtError(f"no bt server answers at {client.url}", "bt serve --status says whether one runs")
        kind = error.kind if isinstance(error, _Malformed) else type(error).__name__
        return BtError(f"the bt server at {client.url} failed to answer ({kind})", "see its log")

    def chunks(reader, framing) -> Iterator[bytes]:
        try:
            yield from _body(reader, *framing)
        except (OSError, _Malformed) as error:
            raise failure(error) from None

    body = b"" if payload is None else json.dumps(payload).encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: bt", "Connection: close"]
    lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"] if payload is not None else []
    request = "\r\n".join([*lines, *(f"{name}: {value}" for name, value in headers.items()), "", ""]).encode()
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(min(connect_s, read_s))
        connection.connect(client.socket)
        connection.settimeout(read_s)
        connection.sendall(request + body)
        reader = connection.makefile("rb")
        status, found = _head(reader)
    except (OSError, _Malformed) as error:
        connection.close()
        raise failure(error) from None
    try:
        framing = (found.get("transfer-encoding", "").lower() == "chunked", found.get("content-length"))
        lines = _Lines(chunks(reader, framing), client.url, read_s)
        whole = lambda: _bounded(chunks(reader, framing), client.url)  # noqa: E731
        yield _Answer(status, found.get("content-type", ""), lines, whole)
    finally:
        connection.close()


def _line(reader) -> bytes:
    line = reader.readline(MAX_HEAD_LINE + 1)
    if len(line) > MAX_HEAD_LINE:
        raise _Malformed("LineTooLong")
    return line


def _head(reader) -> tuple[int, dict[str, str]]:
    """The status and the headers (names in lower case) of an answer."""
    status_line = _line(reader)
    if not status_line:
        raise _Malformed("RemoteDisconnected")
    version, _, rest = status_line.decode("latin-1").partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise _Malformed("BadStatusLine")
    found = {}
    for _ in range(MAX_HEADERS + 1):
        line = _line(reader).decode("latin-1").strip()
        if not line:
            return int(rest[:3]), found
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    raise _Malformed("HTTPException")


def _body(reader, chunked: bool, length: str | None) -> Iterator[bytes]:
    """An answer's body as it arrives: chunked, of a stated length, or up to the end of the connection."""
    if not chunked:
        left = int(length) if length is not None and length.isdigit() else None
        while left is None or left > 0:
            piece = reader.read1(65536 if left is None else min(left, 65536))
            if not piece:
                if left is not None:
                    raise _Malformed("IncompleteRead")
                return
            left = None if left is None else left - len(piece)
            yield piece
        return
    while size := _chunk_size(_line(reader)):
        while size > 0:
            piece = reader.read1(min(size, 65536))
            if not piece:
                raise _Malformed("IncompleteRead")
            size -= len(piece)
            yield piece
        _line(reader)  # (the CRLF after a chunk)


def _chunk_size(line: bytes) -> int:
    try:
        return int(line.split(b";", 1)[0].strip(), 16)
    except ValueError:
        raise _Malformed("IncompleteRead" if not line else "HTTPException") from None


class _Shown:
    """A request's events shown as the CLI shows them in process."""

    def __init__(self, outcome: Outcome, reporter: Reporter, bars: contextlib.ExitStack, meta: dict):
        self.outcome, self.reporter, self.bars, self.meta = outcome, reporter, bars, meta
        self.progress: dict = {}  # id -> [its context, advance, done so far, total, description]
        self.counted: tuple[str, int, int] | None = None  # (description, done, total) of the bar open last
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
            bar = [context, self.bars.enter_context(context), 0, event["total"], event["description"]]
            self.progress[event["id"]] = bar
            self.counted = (event["description"], 0, event["total"])
        elif kind == "advance" and event["id"] in self.progress:
            bar = self.progress[event["id"]]
            bar[2], advanced = event["done"], event["done"] - bar[2]
            self.counted = (bar[4], bar[2], bar[3])
            bar[1](advanced)
            if event.get("end"):
                self.counted = None
                bar[0].__exit__(None, None, None)
                del self.progress[event["id"]]
        elif kind == "meta":
            facts = {key: value for key, value in event.items() if key != "event"}
            self.meta.update(facts)
            self.reporter.meta(**facts)
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
    """The images as a request names them: files and URLs by path or URL to one's own server (it reads them as bt
    in process would); else their bytes, base64 (an unreadable one skipped here, as in process)."""
    images = []
    for source in sources:
        if client.own and source.is_url:
            images.append({"name": source.name, "url": source.url})
            continue
        if client.own and source.path is not None:
            images.append({"name": source.name, "path": source.path})
            continue
        try:
            data = read_bytes(source)
        except InputError as error:
            outcome.skip(source.name, error.message, reporter)
            continue
        images.append({"name": source.name, "data": base64.b64encode(data).decode("ascii")})
    return images
