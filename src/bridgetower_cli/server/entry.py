"""``bridgetower_cli.server:app``: the app for any ASGI runner (``uvicorn bridgetower_cli.server:app``, gunicorn with
uvicorn's worker), settings from the environment (``Settings.from_env``). A light object: the app (FastAPI, the model
pool) is built on its first call, the lifespan's start as a rule, so that importing the package stays cheap. At that
start it refuses, in one line, to serve beyond loopback without a key, however the runner was told where to listen
(``--host``, ``UVICORN_HOST``, ``BT_SERVE_HOST``, gunicorn's ``--bind``, or a socket already listening), and makes
a Unix socket it serves on without a key 0600."""

from __future__ import annotations

import json

from ..errors import BtError


def one_line(error: BtError) -> str:
    return f"bt: error: {error}"


class AsgiApp:
    """The ASGI callable; the app behind it built once, from the environment."""

    def __init__(self):
        self._app = None

    def _build(self):
        if self._app is None:
            from . import runner
            from .settings import Settings
            from .wiring import create_app

            settings = Settings.from_env()
            settings.refuse_exposure(*runner.hosts())
            settings.check_models()
            if settings.api_key is None:
                runner.secure_unix_sockets()
            self._app = create_app(settings)
        return self._app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self._lifespan(scope, receive, send)
        try:
            app = self._build()
        except BtError as error:  # (no lifespan: the runner was started with --lifespan off)
            if scope["type"] != "http":
                raise
            body = json.dumps({"error": error.message, "hint": error.hint}).encode()
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            return await send({"type": "http.response.body", "body": body})
        await app(scope, receive, send)

    async def _lifespan(self, scope, receive, send):
        """The app's lifespan, a failed start said in one line (the runner logs it and exits) instead of a traceback."""
        try:
            app = self._build()
        except BtError as error:
            await receive()  # lifespan.startup
            return await send({"type": "lifespan.startup.failed", "message": one_line(error)})
        held = []

        async def sending(message):
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # (the error follows: said once it is known)
                return
            await send(message)

        try:
            await app(scope, receive, sending)
        except BtError as error:
            if not held:
                raise
            return await send({**held[0], "message": one_line(error)})
        except BaseException:
            if held:
                await send(held[0])
            raise
        if held:
            await send(held[0])


app = AsgiApp()
