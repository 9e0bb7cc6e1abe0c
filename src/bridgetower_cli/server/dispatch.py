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
from pathlib import Path
from typing import Any

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from .. import cancel
from ..cancel import CancelToken
from ..errors import BtError, Cancelled, Forbidden, InputError, TooLarge
from ..model.loading import require_heads
from ..operations import Cost
from ..reading import ReadPolicy, restricted
from ..sources import ImageSource, check_texts
from .events import Channel, Streamed, collected, emit_all, error_event, lines
from .hits import HitLists
from .policy import Policy
from .settings import Settings
from .workers import ModelPool


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
        self.hits = HitLists()  # (a search's ranked hits, kept for the page's scrolling)
        # What request threads may open: under the roots, within the cap (a server of one's own: as bt in process).
        self.reading = ReadPolicy() if settings.own else ReadPolicy(tuple(policy.roots), settings.max_image_bytes)

    def check_strings(self, body: BaseModel) -> None:
        """Refuse, before anything is built, strings that are not Unicode (lone surrogates)."""
        for string in _strings(body):
            try:
                string.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError("a string is not valid Unicode (a lone surrogate)", "send UTF-8 text") from None

    def admit(self, cost: Cost, images: Sequence = ()) -> None:
        """Refuse (413), before any work, a request whose declared sizes are over the limits: texts, images, model
        pairs, mask candidates, prompts; and (422) two images under one name."""
        s = self.settings
        for what, asked, limit in (
            ("texts", cost.texts, s.max_texts),
            ("images", cost.images, s.max_images),
            ("image-text pairs", cost.pairs, s.max_pairs),
            ("mask candidates", cost.candidates, s.max_candidates),
            ("prompts (labels x templates)", cost.prompts, s.max_texts),
            ("characters of prompts (labels x templates)", cost.prompt_characters, s.max_body_bytes),
        ):
            if asked > limit:
                raise TooLarge(f"{asked} {what}, over the limit of {limit}", "send fewer per request")
        names = [image.name for image in images]
        if len(set(names)) < len(names) and not s.own:  # (one's own server: as bt in process)
            twice = next(name for name in names if names.count(name) > 1)
            raise InputError(f"the image name {twice!r} appears twice", "give each image its own name")

    def check(self, body: BaseModel, texts: Sequence[str] = (), images: Sequence = ()) -> None:
        """The OpenAI and Cohere shapes' checks: strings, then texts and images counted as an operation's are."""
        self.check_strings(body)
        check_texts(texts, self.settings.max_texts)
        self.admit(Cost(images=len(images), texts=len(texts)), images)

    def located(self, request, outcome, reporter):
        """A search's or a refresh's images found here, under the roots (``backend.located`` with the policy's
        finder), unless its client found them (a server of one's own)."""
        from ..backend.base import located

        return located(request, outcome, reporter, find=self.policy.sources)

    def images(self, images: Sequence) -> list[ImageSource]:
        """The request's images as sources: bytes (base64 or data URLs, each within the size cap), or a path under
        the roots; on a server of one's own also a URL, read as bt in process reads them."""
        sources = []
        for image in images:
            if image.data is not None:
                sources.append(ImageSource(image.name, data=self.decode(image.data, image.name)))
            elif image.path is not None:  # (under the roots; read under the server's read rule)
                self.policy.check(image.path, "image")
                sources.append(ImageSource(image.name, path=image.path))
            elif not self.settings.own:
                raise Forbidden(f"this server fetches no URLs ({image.name})", "send the image's bytes")
            else:
                sources.append(ImageSource(image.name, url=image.url))
        return sources

    def image_paths(self, images: Sequence) -> list[ImageSource]:
        """The images of an evaluation as sources: each by path (evaluations read files), under the roots."""
        for image in images:
            if image.path is None:
                raise InputError(f"eval reads its images by path ({image.name})", 'send "path"')
            self.policy.check(image.path, "image")
        return [ImageSource(image.name, path=image.path) for image in images]

    def folders(self, folders: Sequence[str]) -> list[Path]:
        """A server of one's own: the folders the client walked (a search's scope)."""
        if folders and not self.settings.own:
            raise Forbidden("this server takes folders only as sources", 'send them as "sources"')
        for folder in folders:
            self.policy.check(folder, "folder")
        return [Path(folder) for folder in folders]  # (as the client named them, as the index holds its paths)

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

    def _start(
        self, model: str, needs, preferred, work: Callable, settle: Callable, shown: str | None = None, loads=True
    ) -> CancelToken:
        """Admit a request for an allowed model (503 at once when full) and run ``work(runtime)`` on a daemon thread
        of its own, under its cancel token and the server's read rule; ``settle(result, error)`` at the end."""
        allowed = self.policy.model(model, shown)
        name, token = allowed.name, CancelToken(self.settings.request_timeout_s)
        self.pool.admit(name, token)

        def run() -> None:
            result, error = None, None
            try:
                model = self.pool.use(allowed, token) if loads else contextlib.nullcontext()  # (None: no model)
                with cancel.watching(token), restricted(self.reading), model as runtime:
                    if runtime is not None:
                        require_heads(runtime.loaded.heads, needs, allowed.shown, preferred)
                    result = work(runtime)
            except BaseException as failure:  # (BtError and anything else alike: rendered for the client)
                error = failure
            finally:
                self.pool.release(name, token)
            settle(result, error)

        threading.Thread(target=run, name="bt-request", daemon=True).start()
        return token

    async def run(self, request: Request, model: str, needs, work: Callable, preferred=()) -> Response:
        """``work(runtime)`` returns a JSON-able answer (the OpenAI and Cohere shapes), serialised on the thread:
        the event loop only hands bytes over. Answers at once when the request is cancelled; the work then stops at
        its next step."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def settle(result, error) -> None:
            data = json.dumps(result, ensure_ascii=False).encode() if error is None else None
            with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown): nobody waits for the answer
                loop.call_soon_threadsafe(_settle, done, data, error)

        token = self._start(model, needs, preferred, work, settle)
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

    async def events(
        self, request: Request, model: str, needs, work: Callable, preferred=(), shown: str | None = None, loads=True
    ) -> Response:
        """``work(runtime, reporter)`` returns records (an iterable, made as it goes) or one result record. A client
        that accepts application/x-ndjson gets them as events while they happen (``events.lines``); another gets
        bt's one-shot answer ({"records", "skipped", "messages"}) at the end."""
        channel = Channel(asyncio.get_running_loop())

        def settle(result, error) -> None:
            if error is not None:
                channel.put(error_event(error))

        def streamed(runtime) -> None:
            emit_all(channel, work(runtime, Streamed(channel)))

        token = self._start(model, needs, preferred, streamed, settle, shown, loads)
        if "application/x-ndjson" in request.headers.get("accept", ""):
            return StreamingResponse(lines(channel, token, request.is_disconnected), media_type="application/x-ndjson")
        received = []
        async for line in lines(channel, token, request.is_disconnected):
            received.append(json.loads(line))
        return Response(json.dumps(collected(received), ensure_ascii=False).encode(), media_type="application/json")


def error_body(error: BtError) -> dict:
    body = {"error": error.message}
    if error.hint:
        body["hint"] = error.hint
    if error.exit_code != 1:  # (a client of one's own server ends as bt in process would)
        body["exit_code"] = error.exit_code
    return body
