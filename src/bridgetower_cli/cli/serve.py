"""``bt serve``: the server's options, its start-up checks, and uvicorn on a socket bound here."""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Annotated

import typer

from ..errors import BtError
from .options import (
    ApiKey,
    BatchSize,
    Device,
    Dtype,
    DtypeOpt,
    Threads,
)

Host = Annotated[
    str,
    typer.Option("--host", help="Address to serve on; anything but loopback needs --api-key.", metavar="HOST"),
]
Port = Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).", metavar="PORT")]
ServeModels = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        "-m",
        help="Load at start (repeat for several); other models load on first use.",
        metavar="ID|DIR",
        show_default=False,
    ),
]
KeepAlive = Annotated[
    str | None,
    typer.Option(
        "--keep-alive",
        help="Unload a model idle this long (30s, 5m, 1h). Default: keep it.",
        metavar="DURATION",
        show_default=False,
    ),
]
AllowPaths = Annotated[
    list[Path] | None,
    typer.Option(
        "--allow-path",
        help="A folder under which clients may name images and indexes for retrieve (repeat). Default: none.",
        metavar="DIR",
        show_default=False,
    ),
]
MaxBody = Annotated[
    float, typer.Option("--max-body", min=0.001, help="Largest request body, in MiB (413 beyond).", metavar="MB")
]
MaxImage = Annotated[
    float, typer.Option("--max-image", min=0.001, help="Largest image in a request, in MiB (413 beyond).", metavar="MB")
]
MaxTexts = Annotated[int, typer.Option("--max-texts", min=1, help="Texts per request (413 beyond).", metavar="N")]
MaxImages = Annotated[int, typer.Option("--max-images", min=1, help="Images per request (413 beyond).", metavar="N")]
DecodePixels = Annotated[
    float,
    typer.Option(
        "--decode-budget",
        min=1,
        help="Megapixels decoding at once, all requests together; a larger image is refused, others wait.",
        metavar="MP",
    ),
]
RequestTimeout = Annotated[
    str,
    typer.Option(
        "--request-timeout",
        help="A request's deadline (504 past it; its work stops at the next batch).",
        metavar="DURATION",
    ),
]
GracefulTimeout = Annotated[
    str,
    typer.Option(
        "--graceful-timeout",
        help="On SIGTERM: how long requests in flight may finish before they are cancelled.",
        metavar="DURATION",
    ),
]
MaxWaiting = Annotated[
    int, typer.Option("--max-waiting", min=1, help="Requests in per model; past it 503 + Retry-After.", metavar="N")
]
MaxModels = Annotated[
    int,
    typer.Option("--max-models", min=1, help="Models loaded at once (the least recently used unloads).", metavar="N"),
]
NoPull = Annotated[
    bool,
    typer.Option("--no-pull", help="Serve only the models given with -m, not the public checkpoints."),
]
IndexDir = Annotated[
    Path | None,
    typer.Option(
        "--index-dir",
        help="The server's own folder of indexes, which requests name (default $XDG_CACHE_HOME/bt/server-indexes).",
        metavar="DIR",
        show_default=False,
    ),
]


EPILOG = (
    "Examples:\n\n"
    "  bt serve -m BridgeTower/bridgetower-base-itm-mlm &\n\n"
    "  BT_SERVER=http://127.0.0.1:8765 bt score samples/cat.jpg 'a cat'\n\n"
    '  bt serve --host 0.0.0.0 --api-key "$KEY" --allow-path ~/Pictures --keep-alive 10m\n\n'
    "Endpoints: /v1/score, /v1/fill-mask, /v1/embed, /v1/retrieve, /v1/models, /v1/embeddings (OpenAI), "
    "/v1/rerank (Cohere), /health; the schema at /docs (with a key: /openapi.json, keyed). Requests may use the "
    "models given with -m and, unless --no-pull, the public checkpoints; paths only under --allow-path (every file "
    "found checked after resolving links); indexes by plain name in --index-dir. The app is "
    "bridgetower_cli.server:app for any ASGI server (settings from BT_SERVE_* variables)."
)


def serve(
    host: Host = "127.0.0.1",
    port: Port = 8765,
    models: ServeModels = None,
    keep_alive: KeepAlive = None,
    allow_path: AllowPaths = None,
    index_dir: IndexDir = None,
    api_key: ApiKey = None,
    no_pull: NoPull = False,
    max_models: MaxModels = 2,
    max_body: MaxBody = 64,
    max_image: MaxImage = 32,
    max_texts: MaxTexts = 1024,
    max_images: MaxImages = 256,
    decode_budget: DecodePixels = 89.5,
    max_waiting: MaxWaiting = 64,
    request_timeout: RequestTimeout = "10m",
    graceful_timeout: GracefulTimeout = "30s",
    device: Device = "auto",
    dtype: DtypeOpt = Dtype.auto,
    threads: Threads = None,
    batch_size: BatchSize = None,
) -> None:
    """Keep models loaded and answer every command (--server URL, env BT_SERVER) over HTTP."""
    try:
        import uvicorn

        from ..server import create_app
        from ..server.settings import is_loopback
    except ImportError:
        raise BtError("bt serve needs the server packages", 'pip install "bridgetower-cli[serve]"') from None
    if not is_loopback(host) and not api_key:
        raise BtError(
            f"serving on {host} (beyond this machine) needs an API key",
            "pass --api-key KEY (env BT_API_KEY), or serve on 127.0.0.1",
        )
    from ..model.hub import resolve_checkpoint

    for model in models or []:  # a missing model is one line now, not a failed start-up later
        resolve_checkpoint(model)
    settings = _settings(locals())
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(2048)  # a client that connects while models load waits in the backlog, never refused
    except OSError as error:
        raise BtError(f"cannot serve on {host}:{port}: {error.strerror or error}", "choose another --port") from None
    bound = listener.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    # uvicorn waits for the requests in flight a little longer than the app lets them run, so that a request cut
    # at the graceful timeout still answers (503) before its connection closes.
    config = uvicorn.Config(
        create_app(settings),
        log_level="warning",
        timeout_graceful_shutdown=settings.graceful_timeout_s + 5,
        limit_concurrency=settings.max_waiting * settings.max_models + 32,  # connections past it: 503 unread
    )
    server = uvicorn.Server(config)
    print(f"http://{shown}:{bound}", flush=True)
    from .console import stderr_console

    stderr_console().print(f"bt: serving on http://{shown}:{bound} (Ctrl-C or SIGTERM to stop)", highlight=False)
    # uvicorn raises the signal again once it has stopped: end with status 0 then.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[listener])


def _settings(given: dict):
    """The server's settings from ``bt serve``'s options."""
    from ..server import Settings
    from ..server.settings import default_index_dir, parse_duration

    g = given
    return Settings(
        models=g["models"] or [],
        device=g["device"],
        dtype=g["dtype"].value,
        threads=g["threads"],
        batch_size=g["batch_size"],
        keep_alive_s=parse_duration(g["keep_alive"]) if g["keep_alive"] else None,
        api_key=g["api_key"],
        host=g["host"],
        allow_paths=[p.expanduser().resolve() for p in g["allow_path"] or []],
        index_dir=g["index_dir"].expanduser() if g["index_dir"] else default_index_dir(),
        no_pull=g["no_pull"],
        max_models=g["max_models"],
        max_body_bytes=int(g["max_body"] * 2**20),
        max_image_bytes=int(g["max_image"] * 2**20),
        max_texts=g["max_texts"],
        max_images=g["max_images"],
        decode_pixels=int(g["decode_budget"] * 1e6),
        max_waiting=g["max_waiting"],
        request_timeout_s=parse_duration(g["request_timeout"]),
        graceful_timeout_s=parse_duration(g["graceful_timeout"]),
    )
