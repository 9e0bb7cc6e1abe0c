"""A request's work as a stream of events (NDJSON), so that a client shows what the command shows in process, as it
happens: each record when it is made, each warning, note and skip in order, the progress of long work, and at the
end the outcome or the error. Heartbeats keep a quiet connection (a model loading) alive within the client's
timeout."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict

from ..cancel import CancelToken
from ..errors import BtError, Busy, Cancelled
from ..records import Reporter

HEARTBEAT_S = 5.0


class Channel:
    """Events from a request's thread to its response, through the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, event: dict) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown): nobody listens any more
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def get(self, timeout: float) -> dict | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None


def error_event(error: BaseException) -> dict:
    """An error as the last event: its message, hint and HTTP status (a surprise is a 500 with no details)."""
    if not isinstance(error, BtError):
        error = BtError(f"unexpected {type(error).__name__}", "see the server's log")
        error.status = 500
    event = {
        "event": "error",
        "error": error.message,
        "hint": error.hint,
        "status": error.status,
        "exit_code": error.exit_code,
    }
    if isinstance(error, Busy):
        event["retry_after"] = error.retry_after_s
    return event


class Streamed(Reporter):
    """A task's reporting, as events: warnings, notes, skips, progress (at most five updates a second), meta."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.bars = 0  # progress bars opened (each event names its bar)

    def warn(self, message: str, kind: str | None = None) -> None:
        self.channel.put({"event": "warn", "message": message, "kind": kind})

    def info(self, message: str) -> None:
        self.channel.put({"event": "info", "message": message})

    def skipped(self, name: str, reason: str) -> None:
        self.channel.put({"event": "skip", "name": name, "reason": reason})

    def meta(self, **values) -> None:
        """Facts the client needs beside the records (an explain's image size), kept here too."""
        super().meta(**values)
        self.channel.put({"event": "meta", **values})

    @contextlib.contextmanager
    def progress(self, total: int, description: str) -> Iterator[Callable[[int], None]]:
        self.bars += 1
        bar = self.bars
        self.channel.put({"event": "progress", "id": bar, "total": total, "description": description})
        done = [0]

        def advance(n: int = 1) -> None:  # (every advance: tasks advance by batch, and a client counts on it)
            done[0] += n
            self.channel.put({"event": "advance", "id": bar, "done": done[0]})

        try:
            yield advance
        finally:
            self.channel.put({"event": "advance", "id": bar, "done": done[0], "end": True})


def emit_all(channel: Channel, result) -> None:
    """A work's result as events: each record of an iterable as it is made, or one result record; then the end."""
    if hasattr(result, "__dataclass_fields__"):
        channel.put({"event": "result", "record": asdict(result)})
    else:
        for record in result:
            channel.put({"event": "record", "record": asdict(record)})
    channel.put({"event": "end"})


async def lines(channel: Channel, token: CancelToken, disconnected: Callable) -> AsyncIterator[bytes]:
    """The response body: one JSON event per line, until the end or an error; a heartbeat when the work is quiet.
    A client that went away, a deadline or a stopping server cancels the work (it stops at its next step)."""
    finished = False
    try:
        while True:
            event = await channel.get(HEARTBEAT_S)
            if event is None:
                if await disconnected():
                    token.cancel(Cancelled("the client went away"))
                    return
                try:
                    token.check()
                except Cancelled as stop:
                    yield (json.dumps(error_event(stop)) + "\n").encode()
                    return
                event = {"event": "alive"}
            finished = event["event"] in ("end", "error")
            yield (json.dumps(event, ensure_ascii=False) + "\n").encode()
            if finished:
                return
    finally:  # (the response cancelled before the end: the client went away, or the server stops)
        if not finished and token.reason is None:
            token.cancel(Cancelled("the client went away"))


def collected(events: list[dict]) -> dict:
    """The events of a finished request as bt's one-shot answer: records, skipped, messages (the error raised)."""
    answer: dict = {"records": [], "skipped": [], "messages": []}
    for event in events:
        kind = event["event"]
        if kind == "record":
            answer["records"].append(event["record"])
        elif kind == "result":
            answer["records"] = [event["record"]]
        elif kind == "skip":
            answer["skipped"].append({"name": event["name"], "reason": event["reason"]})
        elif kind in ("warn", "info"):
            message = {"level": "warning" if kind == "warn" else "info", "message": event["message"]}
            answer["messages"].append(message | ({"kind": event["kind"]} if kind == "warn" else {}))
        elif kind == "meta":
            answer.setdefault("meta", {}).update({k: v for k, v in event.items() if k != "event"})
        elif kind == "error":
            failure = BtError(event["error"], event["hint"])
            failure.status = event["status"]
            raise failure
    return answer
