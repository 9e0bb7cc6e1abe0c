"""``bt serve``: an ASGI app that keeps models loaded and answers bt's own requests (the CLI's records) and the
ecosystem's shapes (OpenAI / infinity embeddings, Cohere / TEI rerank).

    settings   how it runs: the one table of its settings (flag, variable, default, parser, help)
    policy     what a client may make it touch: paths, indexes, models
    workers    the model pool: one worker thread per model, micro-batching, cancel tokens
    dispatch   from an async route to a request thread and back
    schemas    request and response shapes
    routes     bt's own endpoints;  compat   OpenAI and Cohere shapes
    wiring     the app: auth, body limit, errors, start-up checks, graceful stop (``create_app``)
    entry      ``app``, for any ASGI runner: built on first use, from the environment
    runner     what the runner was told and listens on (addresses, Unix sockets)

Importing the package is light (no FastAPI until an app is built).
"""

from .entry import app
from .settings import Settings

__all__ = ["Settings", "app", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .wiring import create_app

        return create_app
    raise AttributeError(name)
