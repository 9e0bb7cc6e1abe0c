"""``bt serve``: an ASGI app that keeps models loaded and answers bt's own requests (the CLI's records) and the
ecosystem's shapes (OpenAI / infinity embeddings, Cohere / TEI rerank).

    settings   how it runs: models, roots, index folder, key, limits
    policy     what a client may make it touch: paths, indexes, models
    workers    the model pool: one worker thread per model, micro-batching, cancel tokens
    dispatch   from an async route to a request thread and back
    schemas    request and response shapes
    routes     bt's own endpoints;  compat   OpenAI and Cohere shapes
    app        the wiring: auth, body limit, errors, start-up checks, graceful stop
"""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]


def __getattr__(name: str):
    """``bridgetower_cli.server:app`` for ASGI runners (uvicorn --workers N, gunicorn -k uvicorn.workers...)."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
