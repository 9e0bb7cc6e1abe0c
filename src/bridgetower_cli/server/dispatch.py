"""From an async route to a request thread and back: admission (503 at once when a model has ``max_waiting``
requests in), the work on a daemon thread of its own, and the request's token cancelled when its client goes away,
its deadline passes or the server stops. The event loop never runs model work, so ``/health`` answers at once."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from fastapi import Request, Response
from pydantic import BaseModel

from .. import cancel
from ..cancel import CancelToken
from ..errors import BtError, Cancelled, InputError, TooLarge
from ..model.loading import require_heads
from ..reading import ReadPolicy, restricted
from ..records import Outcome, Reporter
from ..sources import ImageSource, check_texts
from .policy import Policy
from .settings import Settings
from .workers import ModelPool


class Collected(Reporter):
    """What a task reported, to send back with its records (the client shows it as the CLI would)."""

    def __init__(self):
        self.messages: list[dict] = []

    def warn(self, message: str, kind: str | None = None) -> None:
        self.messages.append({"level": "warning", "message": message, "kind": kind})

    def info(self, message: str) -> None:
        self.messages.append({"level": "info", "message": message})


def answer(records, outcome: Outcome, reporter: Collected) -> dict:
    """bt's own answer: the records as the CLI prints them, the skipped inputs and the messages."""
    return {
        "records": [asdict(r) for r in records],
        "skipped": [asdict(s) for s in outcome.skipped],
        "messages": reporter.messages,
    }


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if not future.done():
        future.set_exception(error) if error is not None else future.set_result(result)


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, BaseModel):
        value = list(value.__dict__.values())
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _strings(item)]
    return []


class Dispatcher:
    """Runs a request's work for a model, as described in the module's docstring."""

    def __init__(self, settings: Settings, pool: ModelPool, policy: Policy):
        self.settings, self.pool, self.policy = settings, pool, policy
        self.reading = ReadPolicy(tuple(policy.roots), settings.max_image_bytes)  # what request threads may open

    def check(self, body: BaseModel, texts: Sequence[str] = (), images: Sequence = ()) -> None:
        """Refuse, before any work, what no model may take: strings that are not Unicode (lone surrogates), more texts
        or images than the limits, two images under one name."""
        for string in _strings(body):
            try:
                string.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError("a string is not valid Unicode (a lone surrogate)", "send UTF-8 text") from None
        check_texts(texts, self.settings.max_texts)
        if len(images) > self.settings.max_images:
            raise TooLarge(f"{len(images)} images, over the limit of {self.settings.max_images}", "send fewer")
        names = [image.name for image in images]
        if len(set(names)) < len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise InputError(f"the image name {twice!r} appears twice", "give each image its own name")

    def images(self, images: Sequence) -> list[ImageSource]:
        """The request's images as sources holding their bytes (base64 or data URLs, each within the size cap)."""
        return [ImageSource(i.name, data=self.decode(i.data, i.name)) for i in images]

    def decode(self, data: str, what: str) -> bytes:
        limit = self.settings.max_image_bytes
        if data.startswith("data:"):
            header, _, data = data.partition(",")
            if ";base64" not in header:
                raise InputError(f"{what} is a data URL without base64", "send data:image/...;base64,...")
        if len(data) * 3 // 4 > limit:
            raise TooLarge(f"{what} is larger than {limit // 2**20} MiB")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{what} is not valid base64") from None

    def batch_size(self, runtime) -> int:
        return self.settings.batch_size or runtime.default_batch_size

    async def run(
        self,
        request: Request,
        model: str,
        needs: tuple[str, ...],
        work: Callable,
        preferred: tuple[str, ...] = (),
    ) -> Response:
        """``work(runtime)`` for an allowed model on a request thread, its answer (a JSON-able object) serialised
        there too: the event loop only hands bytes over. Answers at once when the request is cancelled (a client
        gone, a deadline, a stopping server); the work then stops at its next step."""
        allowed = self.policy.model(model)
        name, token = allowed.name, CancelToken(self.settings.request_timeout_s)
        self.pool.admit(name, token)
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def run() -> None:
            result, error = None, None
            try:
                with cancel.watching(token), restricted(self.reading), self.pool.use(allowed, token) as runtime:
                    require_heads(runtime.loaded.heads, needs, model, preferred)
                    result = json.dumps(work(runtime), ensure_ascii=False).encode()
            except BaseException as failure:  # (BtError and anything else alike: the handlers render it)
                error = failure
            finally:
                self.pool.release(name, token)
            with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown): nobody waits for the answer
                loop.call_soon_threadsafe(_settle, done, result, error)

        threading.Thread(target=run, name="bt-request", daemon=True).start()
        try:
            while not done.done():
                await asyncio.wait({done}, timeout=0.1)
                if done.done():
                    break
                if token.reason is None and await request.is_disconnected():
                    token.cancel(Cancelled("the client went away"))
                token.check()  # a reason (or a deadline passed): answer now
        except asyncio.CancelledError:  # the server stops past its graceful timeout
            token.cancel(Cancelled("the server is shutting down", "retry when it is back"))
            raise
        return Response(done.result(), media_type="application/json")


def error_body(error: BtError) -> dict:
    body = {"error": error.message}
    if error.hint:
        body["hint"] = error.hint
    return body
