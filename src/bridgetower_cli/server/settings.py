"""How a bt server runs: its models, roots, index folder, key, and every limit, each with a sane default."""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..images import DEFAULT_MAX_IMAGE_PIXELS


def default_index_dir() -> Path:
    """``$XDG_CACHE_HOME/bt/server-indexes``: the server's own folder of indexes, named by clients."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "bt" / "server-indexes"


@dataclass
class Settings:
    """``bt serve`` fills it from its options, an ASGI runner from ``BT_SERVE_*`` variables (``from_env``)."""

    models: list[str] = field(default_factory=list)  # loaded at start; with the catalog's, all a request may name
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    batch_size: int | None = None
    fast_decode: bool = False  # JPEGs read at a reduced scale (images.decode_image)
    keep_alive_s: float | None = None  # unload a model idle this long (None: never)
    api_key: str | None = None
    host: str = "127.0.0.1"  # where it listens: beyond loopback the app refuses to start without a key
    allow_paths: list[Path] = field(default_factory=list)
    index_dir: Path = field(default_factory=default_index_dir)
    no_pull: bool = False  # only the models given, not the public checkpoints of the catalog
    max_models: int = 2  # loaded at once; the least recently used idle one is unloaded for another
    max_body_bytes: int = 64 * 2**20
    body_timeout_s: float = 60.0  # for a request's whole body to arrive (408 past it): slow uploads hold no memory
    max_image_bytes: int = 32 * 2**20
    max_texts: int = 1024  # per request
    max_images: int = 256  # per request (and sources per retrieve)
    max_pairs: int = 100_000  # image x text pairs per request
    max_candidates: int = 1_000_000  # fill-mask candidates per request (images x masks x top_k)
    decode_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # decoding at once, all requests together (~14 bytes each)
    request_timeout_s: float | None = 600.0  # a request's deadline: past it, 504 and its work stops at the next batch
    graceful_timeout_s: float = 30.0  # on SIGTERM, how long requests in flight may still run
    max_waiting: int = 64  # requests admitted per model (running or queued); past it, 503 with Retry-After
    batch_window_s: float = 0.005
    own: bool = False  # a server of one user's own (bt serve --uds): requests act with that user's rights, as bt does
    idle_exit: bool = False  # exit once idle for keep_alive_s (the automatic server)

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of ``bridgetower_cli.server:app`` under any ASGI server, from the environment."""
        env = os.environ
        number = _env_number
        keep_alive = env.get("BT_SERVE_KEEP_ALIVE")
        return cls(
            models=[m for m in env.get("BT_SERVE_MODELS", "").split(",") if m],
            device=env.get("BT_DEVICE", "auto"),
            dtype=env.get("BT_DTYPE", "auto"),
            threads=int(number("BT_THREADS", 0)) or None,
            fast_decode=env.get("BT_FAST_DECODE", "").lower() in ("1", "true", "yes"),
            keep_alive_s=parse_duration(keep_alive) if keep_alive else None,
            api_key=env.get("BT_API_KEY") or None,
            host=env.get("BT_SERVE_HOST") or _host_from_argv() or "127.0.0.1",
            allow_paths=[Path(p).resolve() for p in env.get("BT_SERVE_ALLOW_PATHS", "").split(os.pathsep) if p],
            index_dir=Path(env["BT_SERVE_INDEX_DIR"]) if env.get("BT_SERVE_INDEX_DIR") else default_index_dir(),
            no_pull=env.get("BT_SERVE_NO_PULL") == "1",
            max_models=int(number("BT_SERVE_MAX_MODELS", 2)),
            max_body_bytes=int(number("BT_SERVE_MAX_BODY_MB", 64) * 2**20),
            max_image_bytes=int(number("BT_SERVE_MAX_IMAGE_MB", 32) * 2**20),
            max_texts=int(number("BT_SERVE_MAX_TEXTS", 1024)),
            max_images=int(number("BT_SERVE_MAX_IMAGES", 256)),
            request_timeout_s=number("BT_SERVE_REQUEST_TIMEOUT", 600),
            graceful_timeout_s=number("BT_SERVE_GRACEFUL_TIMEOUT", 30),
        )


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"{name}={value} is not a number", f"e.g. {name}={default:g}") from None


def _host_from_argv() -> str | None:
    """The ``--host`` a plain ``uvicorn bridgetower_cli.server:app`` was started with (uvicorn's own option)."""
    args = sys.argv[1:]
    for k, arg in enumerate(args):
        if arg == "--host" and k + 1 < len(args):
            return args[k + 1]
        if arg.startswith("--host="):
            return arg.split("=", 1)[1]
    return None


def parse_duration(text: str) -> float:
    """``30s``, ``5m``, ``1h`` or plain seconds, as ollama's keep_alive."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except ValueError:
        raise UsageError(f"not a duration: {text!r}", "e.g. 30s, 5m, 1h") from None
    if value < 0:
        raise UsageError(f"not a duration: {text!r}", "e.g. 30s, 5m, 1h")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
