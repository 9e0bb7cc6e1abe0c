"""``bt serve``: the server's options, its start-up checks, and uvicorn on a socket bound here."""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from ..errors import BtError
from ..server.settings import SETTING
from .options import Format, FormatOpt


def _option(name: str):
    """``bt serve``'s option for a setting, from the settings table: its flags, help, metavar, and the variable it
    falls back to (read by the table, as the app for an ASGI runner reads it)."""
    setting = SETTING[name]
    kind = bool if setting.switch else list[str] | None if setting.many else str | None
    shown = isinstance(setting.default, str)
    metavar = {} if setting.switch else {"metavar": setting.metavar}
    info = typer.Option(*setting.flags, help=f"{setting.help} (env {setting.env})", show_default=shown, **metavar)
    return Annotated[kind, info]


def _default(name: str):
    """The option's default as help shows it (a setting's default is the table's, applied when building it)."""
    default = SETTING[name].default
    return default if isinstance(default, (str, bool)) else None


Host, ServeModels, Device, Dtype = _option("host"), _option("models"), _option("device"), _option("dtype")
Threads, BatchSize, FastDecode = _option("threads"), _option("batch_size"), _option("fast_decode")
KeepAlive, IdleExit, ApiKey = _option("keep_alive_s"), _option("idle_exit"), _option("api_key")
ApiKeyFile, AllowedHosts = _option("api_key_file"), _option("allowed_hosts")
AllowPaths, IndexDir, NoPull = _option("allow_paths"), _option("index_dir"), _option("no_pull")
MaxModels, MaxBody, BodyTimeout = _option("max_models"), _option("max_body_bytes"), _option("body_timeout_s")
MaxImage, MaxTexts, MaxImages = _option("max_image_bytes"), _option("max_texts"), _option("max_images")
MaxPairs, MaxCandidates, DecodePixels = _option("max_pairs"), _option("max_candidates"), _option("decode_pixels")
RequestTimeout, GracefulTimeout = _option("request_timeout_s"), _option("graceful_timeout_s")
MaxWaiting, BatchWindow = _option("max_waiting"), _option("batch_window_s")

Port = Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).", metavar="PORT")]
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
Status = Annotated[
    bool, typer.Option("--status", help="Show the automatic server (socket, pid, uptime, models, memory) and exit.")
]
Stop = Annotated[bool, typer.Option("--stop", help="Stop the automatic server and exit.")]
OpenPage = Annotated[
    bool, typer.Option("--open", help="Open the search page (/) in the default browser once the server answers.")
]


EPILOG = (
    "Examples:\n\n"
    "  bt serve -m BridgeTower/bridgetower-base-itm-mlm &\n\n"
    "  BT_SERVER=http://127.0.0.1:8765 bt score samples/cat.jpg 'a cat'\n\n"
    "  bt serve --host 0.0.0.0 --api-key-file ~/.config/bt/key --allow-path ~/Pictures --keep-alive 10m\n\n"
    "  BT_SERVER=auto bt score samples/cat.jpg 'a cat'; bt serve --status; bt serve --stop\n\n"
    "  bt serve --allow-path ~/Pictures --open      # the search page, in your browser\n\n"
    "With --server auto (env BT_SERVER=auto) the first call starts a server of your own on a Unix socket in a "
    "private folder; it exits after BT_KEEP_ALIVE idle (default 10m).\n\n"
    "Endpoints: /v1/score, /v1/fill-mask, /v1/embed, /v1/retrieve, /v1/index, /v1/eval, /v1/explain, /v1/models, "
    "/v1/status, /v1/embeddings (OpenAI), "
    "/v1/rerank (Cohere), /health; the schema at /docs (with a key: /openapi.json, keyed). Requests may use the "
    "models given with -m and, unless --no-pull, the public checkpoints; paths only under --allow-path (every file "
    "found checked after resolving links); indexes by plain name in --index-dir. The app is "
    "bridgetower_cli.server:app for any ASGI server (settings from the variables named above)."
)


def serve(
    ctx: typer.Context,
    host: Host = _default("host"),
    port: Port = 8765,
    uds: Uds = None,
    models: ServeModels = None,
    keep_alive_s: KeepAlive = None,
    idle_exit: IdleExit = False,
    allow_paths: AllowPaths = None,
    index_dir: IndexDir = None,
    api_key: ApiKey = None,
    api_key_file: ApiKeyFile = None,
    allowed_hosts: AllowedHosts = None,
    no_pull: NoPull = False,
    max_models: MaxModels = _default("max_models"),
    max_body_bytes: MaxBody = _default("max_body_bytes"),
    max_image_bytes: MaxImage = _default("max_image_bytes"),
    max_texts: MaxTexts = _default("max_texts"),
    max_images: MaxImages = _default("max_images"),
    max_pairs: MaxPairs = _default("max_pairs"),
    max_candidates: MaxCandidates = _default("max_candidates"),
    decode_pixels: DecodePixels = _default("decode_pixels"),
    max_waiting: MaxWaiting = _default("max_waiting"),
    body_timeout_s: BodyTimeout = _default("body_timeout_s"),
    request_timeout_s: RequestTimeout = _default("request_timeout_s"),
    graceful_timeout_s: GracefulTimeout = _default("graceful_timeout_s"),
    batch_window_s: BatchWindow = _default("batch_window_s"),
    device: Device = _default("device"),
    dtype: Dtype = _default("dtype"),
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
    settings = _settings(ctx, uds)
    if open_page and uds is not None:
        raise BtError("--open needs an HTTP address: a browser cannot open a Unix socket", "drop --uds")
    try:
        import uvicorn

        from ..server import create_app
    except ImportError:
        raise BtError("bt serve needs the server packages", 'pip install "bridgetower-cli[serve]"') from None
    settings.check_models()
    listener, address, cleanup = _unix_listener(uds) if uds is not None else _tcp_listener(settings.host, port)
    from ..server.connections import uvicorn_config

    server = uvicorn.Server(uvicorn_config(create_app(settings), settings.graceful_timeout_s))
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


def _settings(ctx: typer.Context, uds: Path | None):
    """The server's settings: the options given on the command line, over the environment, over the defaults, all
    read by the settings table; for --uds, those of a server of one's own."""
    from ..server.settings import Settings
    from .common import warn_key_on_command_line

    # (by its name: Typer may run on a copy of click of its own)
    given = {name: ctx.params[name] for name in SETTING if ctx.get_parameter_source(name).name == "COMMANDLINE"}
    settings = Settings.from_env(given=given)
    if "api_key" in given:
        warn_key_on_command_line()
    if uds is not None:
        return settings.of_own()
    settings.refuse_exposure()
    return settings


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
        silent = autoserver.wedged() if found is None else None
        if silent is not None:
            raise BtError(
                f"the automatic bt server is not answering (pid {silent})",
                "bt serve --stop ends it; the next call with --server auto replaces it",
            )
        if found is None:
            raise BtError("no automatic bt server is running", "the first call with --server auto starts one")
        return render_object(found, fmt.value)
    pid = autoserver.stop()
    StderrReporter().info("no automatic bt server was running" if pid is None else f"stopped the server (pid {pid})")
