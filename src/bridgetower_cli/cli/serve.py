"""``bt serve``: the server's options, its start-up checks, and uvicorn on a socket bound here."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from collections.abc import Callable
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
    FastDecode,
    Format,
    FormatOpt,
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
Uds = Annotated[
    Path | None,
    typer.Option(
        "--uds",
        help="Listen on this Unix socket instead (made 0600: only you can connect). Requests then act with your "
        "rights, as bt in process: any path, any model, an index by its file's path; no limits on counts.",
        metavar="PATH",
        show_default=False,
    ),
]
IdleExit = Annotated[
    bool, typer.Option("--idle-exit", help="Exit once idle for --keep-alive (the automatic server does).")
]
Status = Annotated[
    bool, typer.Option("--status", help="Show the automatic server (socket, pid, uptime, models, memory) and exit.")
]
Stop = Annotated[bool, typer.Option("--stop", help="Stop the automatic server and exit.")]
OpenPage = Annotated[
    bool, typer.Option("--open", help="Open the search page (/) in the default browser once the server answers.")
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
    "  BT_SERVER=auto bt score samples/cat.jpg 'a cat'; bt serve --status; bt serve --stop\n\n"
    "  bt serve --allow-path ~/Pictures --open      # the search page, in your browser\n\n"
    "With --server auto (env BT_SERVER=auto) the first call starts a server of your own on a Unix socket in a "
    "private folder; it exits after BT_KEEP_ALIVE idle (default 10m).\n\n"
    "Endpoints: /v1/score, /v1/fill-mask, /v1/embed, /v1/retrieve, /v1/index, /v1/eval, /v1/explain, /v1/models, "
    "/v1/status, /v1/embeddings (OpenAI), "
    "/v1/rerank (Cohere), /health; the schema at /docs (with a key: /openapi.json, keyed). Requests may use the "
    "models given with -m and, unless --no-pull, the public checkpoints; paths only under --allow-path (every file "
    "found checked after resolving links); indexes by plain name in --index-dir. The app is "
    "bridgetower_cli.server:app for any ASGI server (settings from BT_SERVE_* variables)."
)


def serve(
    host: Host = "127.0.0.1",
    port: Port = 8765,
    uds: Uds = None,
    models: ServeModels = None,
    keep_alive: KeepAlive = None,
    idle_exit: IdleExit = False,
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
    fast_decode: FastDecode = False,
    status: Status = False,
    stop: Stop = False,
    open_page: OpenPage = False,
    fmt: FormatOpt = Format.auto,
) -> None:
    """Keep models loaded and answer every command (--server URL, env BT_SERVER; or --server auto) over HTTP."""
    if status or stop:
        return _automatic(status, fmt)
    try:
        import uvicorn

        from ..server import create_app
        from ..server.settings import is_loopback
    except ImportError:
        raise BtError("bt serve needs the server packages", 'pip install "bridgetower-cli[serve]"') from None
    if uds is None and not is_loopback(host) and not api_key:
        raise BtError(
            f"serving on {host} (beyond this machine) needs an API key",
            "pass --api-key KEY (env BT_API_KEY), or serve on 127.0.0.1",
        )
    if open_page and uds is not None:
        raise BtError("--open needs an HTTP address: a browser cannot open a Unix socket", "drop --uds")
    if idle_exit and not keep_alive:
        raise BtError("--idle-exit needs --keep-alive", "e.g. --idle-exit --keep-alive 10m")
    from ..model.hub import resolve_checkpoint

    for model in models or []:  # a missing model is one line now, not a failed start-up later
        resolve_checkpoint(model)
    settings = _settings(locals())
    listener, address, cleanup = _unix_listener(uds) if uds is not None else _tcp_listener(host, port)
    # uvicorn waits for the requests in flight a little longer than the app lets them run, so that a request cut
    # at the graceful timeout still answers (503) before its connection closes.
    config = uvicorn.Config(
        create_app(settings),
        log_level="warning",
        timeout_graceful_shutdown=settings.graceful_timeout_s + 5,
        limit_concurrency=settings.max_waiting * settings.max_models + 32,  # connections past it: 503 unread
    )
    server = uvicorn.Server(config)
    print(address, flush=True)
    from .console import stderr_console

    stderr_console().print(f"bt: serving on {address} (Ctrl-C or SIGTERM to stop)", highlight=False)
    # uvicorn raises the signal again once it has stopped: end with status 0 then.
    signal.signal(signal.SIGTERM, lambda *_: None)
    if open_page:
        _open_when_started(server, address)
    try:
        server.run(sockets=[listener])
    finally:
        cleanup()


def _open_when_started(server, address: str) -> None:
    """Open the page in the default browser once uvicorn has started (within a minute)."""
    import threading
    import time
    import webbrowser

    def opener() -> None:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        if server.started:
            webbrowser.open(address + "/")

    threading.Thread(target=opener, daemon=True, name="bt-open").start()


def _tcp_listener(host: str, port: int) -> tuple[socket.socket, str, Callable]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(2048)  # a client that connects while models load waits in the backlog, never refused
    except OSError as error:
        raise BtError(f"cannot serve on {host}:{port}: {error.strerror or error}", "choose another --port") from None
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return listener, f"http://{shown}:{listener.getsockname()[1]}", lambda: None


def _unix_listener(path: Path) -> tuple[socket.socket, str, Callable]:
    """A Unix socket at ``path``, 0600 from the start, and what removes it at the end (if it is still the one made
    here). A socket file there that nobody answers on (left by a server that was killed) is replaced; anything else
    there is refused."""
    import os
    import stat

    path = path.expanduser().absolute()
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise BtError(f"{path} exists and is not a socket", "pass another --uds path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            os.unlink(path)  # a dead server's socket
        else:
            raise BtError(f"a server already listens on {path}", "bt serve --stop stops the automatic one")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        listener.bind(str(path))
    except OSError as error:
        raise BtError(f"cannot listen on {path}: {error.strerror or error}", "pass another --uds path") from None
    finally:
        os.umask(previous)
    os.chmod(path, 0o600)
    listener.listen(2048)
    made = os.stat(path).st_ino

    def remove() -> None:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == made:
                os.unlink(path)

    return listener, f"unix:{path}", remove


def _automatic(show: bool, fmt: Format) -> None:
    """``--status`` / ``--stop`` of the automatic server."""
    from .. import autoserver
    from .render import StderrReporter, render_object

    if show:
        found = autoserver.status()
        if found is None:
            raise BtError("no automatic bt server is running", "the first call with --server auto starts one")
        return render_object(found, fmt.value)
    pid = autoserver.stop()
    StderrReporter().info("no automatic bt server was running" if pid is None else f"stopped the server (pid {pid})")


def _settings(given: dict):
    """The server's settings from ``bt serve``'s options."""
    from ..server import Settings
    from ..server.settings import default_index_dir, parse_duration

    g = given
    models = {  # how the models run, whichever the server
        "models": g["models"] or [],
        "device": g["device"],
        "dtype": g["dtype"].value,
        "threads": g["threads"],
        "batch_size": g["batch_size"],
        "fast_decode": g["fast_decode"],
        "keep_alive_s": parse_duration(g["keep_alive"]) if g["keep_alive"] else None,
        "max_models": g["max_models"],
    }
    if g["uds"] is not None:  # a server of one's own: as bt in process, without a request's limits on counts
        return Settings(**models, own=True, idle_exit=g["idle_exit"], **OWN_LIMITS)
    return Settings(
        **models,
        api_key=g["api_key"],
        host=g["host"],
        allow_paths=[p.expanduser().resolve() for p in g["allow_path"] or []],
        index_dir=g["index_dir"].expanduser() if g["index_dir"] else default_index_dir(),
        no_pull=g["no_pull"],
        max_body_bytes=int(g["max_body"] * 2**20),
        max_image_bytes=int(g["max_image"] * 2**20),
        max_texts=g["max_texts"],
        max_images=g["max_images"],
        decode_pixels=int(g["decode_budget"] * 1e6),
        max_waiting=g["max_waiting"],
        request_timeout_s=parse_duration(g["request_timeout"]),
        graceful_timeout_s=parse_duration(g["graceful_timeout"]),
        idle_exit=g["idle_exit"],
    )


# A server of one's own answers its user as bt in process does: no count or size limit (bt in process has none),
# no deadline (Ctrl-C on the client cancels).
OWN_LIMITS = {
    "max_body_bytes": 2**40,
    "max_image_bytes": 2**40,
    "max_texts": sys.maxsize,
    "max_images": sys.maxsize,
    "max_pairs": sys.maxsize,
    "max_candidates": sys.maxsize,
    "request_timeout_s": None,
    "body_timeout_s": 600.0,
}
