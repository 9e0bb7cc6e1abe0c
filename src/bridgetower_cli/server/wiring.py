"""The ASGI app (FastAPI): wiring of the settings, the policy, the model pool, the routes, auth, limits, errors
and the lifecycle (start-up checks, graceful stop). Run it with ``bt serve``, or as ``bridgetower_cli.server:app``
under any ASGI server (settings from the environment: ``Settings.from_env``)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import signal
import threading
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .. import images
from ..errors import BtError, Busy, Cancelled, Forbidden, InputError, TooLarge, Unauthorized
from . import compat, routes, web
from .dispatch import Dispatcher, error_body
from .policy import Policy
from .settings import Settings, is_loopback
from .workers import ModelPool


def render_error(error: BtError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after_s)} if isinstance(error, Busy) else None
    return JSONResponse(error_body(error), status_code=error.status, headers=headers)


def _local(scope) -> bool:
    """Whether a request arrived on loopback or a Unix socket (whose file permissions guard it)."""
    return _on_socket(scope) or is_loopback(str(scope["server"][0]))


def _key_matches(scope, key: str) -> bool:
    header = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def _foreign(scope, settings: Settings) -> BtError | None:
    """A browser's request that is not the server's own: without a key, a ``Host`` that is not a loopback name or an
    allowed one (a web page reaching the server by DNS rebinding); with or without, a body-carrying request from
    another ``Origin`` (a page of another site, a sandboxed frame, another port). A Unix socket has no browser."""
    if settings.own or _on_socket(scope):
        return None
    headers = dict(scope.get("headers", []))
    host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    if settings.api_key is None and not _served_name(host, settings.allowed_hosts):
        return Forbidden(
            f"the Host {host[:80]!r} is not this server's name",
            "browse it at localhost or 127.0.0.1, or start it with --allowed-host NAME",
        )
    origin = headers.get(b"origin")
    if origin is not None and scope.get("method") not in ("GET", "HEAD", "OPTIONS"):
        scheme, _, authority = origin.decode("latin-1").strip().lower().partition("://")
        if scheme not in ("http", "https") or authority != host:
            return Forbidden("a request from another origin (a web page elsewhere) is refused", "send it from bt")
    return None


def _on_socket(scope) -> bool:
    server = scope.get("server")
    return server is None or server[1] is None or str(server[0]).startswith("/")


def _served_name(host: str, allowed: list[str]) -> bool:
    """Whether a ``Host`` header (name or address, any port) names loopback or an allowed name."""
    name = host[1 : host.find("]")] if host.startswith("[") else host.rpartition(":")[0] if ":" in host else host
    return is_loopback(name) or name.rstrip(".") in allowed


PUBLIC = ("/health", "/")


def _public(scope) -> bool:
    """The paths anyone may GET: health, the page and its files (they hold no data; the page asks for the key)."""
    return scope["path"] in PUBLIC or scope["path"].startswith("/static/")


async def _no_body():
    return {"type": "http.request", "body": b"", "more_body": False}


# Every answer: scripts, styles, images and connections from this server only (the page's thumbnails are blob: URLs
# of fetched bytes, its overlays data: URLs), no framing, no sniffing, no referrer.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
        b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def _secured(send):
    async def sending(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
        await send(message)

    return sending


class Guard:
    """ASGI middleware, in front of everything: who may ask (the API key, or loopback only without one) is decided
    before a byte of the body is read; then the body is read within ``body_timeout_s`` and up to ``limit`` bytes
    (chunked or not; a larger declared Content-Length is refused unread). The app sees only admitted requests."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    def _refusal(self, scope) -> BtError | None:
        public = _public(scope)
        if not public and self.settings.api_key is not None:
            if not _key_matches(scope, self.settings.api_key):
                return Unauthorized("missing or wrong API key", "send Authorization: Bearer KEY")
        elif not public and not _local(scope):
            return Forbidden("this server has no API key and answers on loopback only", "restart it with --api-key KEY")
        refusal = _foreign(scope, self.settings)
        if refusal is not None or public:
            return refusal
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.settings.max_body_bytes:
            return TooLarge(f"request body over {self.settings.max_body_bytes // 2**20} MiB", "send less per request")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = _secured(send)
        refusal = self._refusal(scope)
        if refusal is not None:
            return await render_error(refusal)(scope, receive, send)
        if _public(scope):  # (pages and /health take no body: one sent is never read)
            if scope["method"] not in ("GET", "HEAD"):
                wrong = BtError(f"{scope['method']} is not allowed on {scope['path']}", "use GET")
                wrong.status = 405
                return await render_error(wrong)(scope, receive, send)
            return await self.app(scope, _no_body, send)
        messages, size, limit = [], 0, self.settings.max_body_bytes
        deadline = time.monotonic() + self.settings.body_timeout_s  # for the whole body, however it trickles in
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                slow = BtError(f"the request body did not arrive within {self.settings.body_timeout_s:g} s")
                slow.status = 408
                return await render_error(slow)(scope, receive, send)
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                return await render_error(TooLarge(f"request body over {limit // 2**20} MiB"))(scope, receive, send)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def _stop_on_signals(pool: ModelPool, settings: Settings) -> None:
    """Chain SIGTERM and SIGINT (in the main thread, as uvicorn installs them): when one comes, the requests in
    flight get ``graceful_timeout_s`` to finish, then are cancelled (each stops at its next batch and answers 503)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def cancel_later() -> None:
        timer = threading.Timer(
            settings.graceful_timeout_s,
            pool.cancel_all,
            [Cancelled("the server is shutting down", "retry when it is back")],
        )
        timer.daemon = True
        timer.start()

    for number in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(number)

        def handler(sig, frame, previous=previous):
            cancel_later()
            if callable(previous):
                previous(sig, frame)

        signal.signal(number, handler)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app. ``settings`` default to ``Settings.from_env()``."""
    settings = settings or Settings.from_env()
    pool, policy = ModelPool(settings), Policy(settings)
    dispatch = Dispatcher(settings, pool, policy)
    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.refuse_exposure()
        images.set_decode_budget(images.DecodeBudget(settings.decode_pixels))
        for name in settings.models:
            with pool.use(policy.model(name), None):
                pass
        threading.Thread(target=_reap, daemon=True, name="bt-reaper").start()
        _stop_on_signals(pool, settings)
        yield
        stop.set()
        pool.close()
        images.set_decode_budget(None)

    def _reap() -> None:
        """Unload the models idle past keep-alive; with ``idle_exit``, then stop the server (as SIGTERM does)."""
        while not stop.wait(min(1.0, settings.keep_alive_s or 1.0)):
            pool.unload_idle()
            if settings.idle_exit and settings.keep_alive_s is not None and pool.idle_s() > settings.keep_alive_s:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    keyed = settings.api_key is not None
    app = FastAPI(
        title="bt",
        summary="BridgeTower at a warm server: score, fill-mask, embed, retrieve, embeddings, rerank.",
        lifespan=lifespan,
        docs_url=None if keyed else "/docs",
        redoc_url=None,
        openapi_url=None if keyed else "/openapi.json",
    )
    app.state.pool, app.state.settings, app.state.policy = pool, settings, policy
    app.add_middleware(Guard, settings=settings)
    app.include_router(routes.router(dispatch))
    app.include_router(compat.router(dispatch))
    app.include_router(web.router(dispatch))

    @app.get("/health")
    async def health() -> dict:
        """Whether the server answers: constant time, no key, nothing about what it serves."""
        return {"status": "ok"}

    if keyed:

        @app.get("/openapi.json", include_in_schema=False)  # (the guard asks for the key)
        async def openapi() -> dict:
            return app.openapi()

    _handle_errors(app, settings)
    return app


def _handle_errors(app: FastAPI, settings: Settings) -> None:
    """Every answer but a success is ``{"error", "hint"}`` with the error type's status; never a traceback."""

    @app.exception_handler(BtError)
    async def typed(request: Request, error: BtError):
        return render_error(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return render_error(InputError(f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}"))

    @app.exception_handler(HTTPException)
    async def http(request: Request, error: HTTPException):
        message = {404: "no such endpoint", 405: "method not allowed here"}.get(error.status_code, str(error.detail))
        hint = "see /openapi.json for the endpoints" if settings.api_key else "see /docs for the endpoints"
        failure = BtError(f"{message}: {request.method} {request.url.path}", hint)
        failure.status = error.status_code
        return render_error(failure)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        failure = BtError(f"unexpected {type(error).__name__}", "see the server's log")
        failure.status = 500
        return render_error(failure)
