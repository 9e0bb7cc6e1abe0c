"""How a bt server runs: its models, roots, index folder, key, and every limit, each with a sane default.

One table, ``SETTINGS``: for each setting its field, ``bt serve``'s flag, its environment variable, its default (as
one writes it), its parser and its help. ``bt serve`` builds its options from it, ``Settings.from_env`` reads it (the
app for any ASGI runner), the fields' defaults are its, and the automatic server's identity covers its variables.
Light: the standard library only (``bt --help`` imports it)."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..durations import parse_duration
from ..errors import BtError, UsageError
from ..model.catalog import DTYPES, check_device, check_dtype


def default_index_dir() -> Path:
    """``$XDG_CACHE_HOME/bt/server-indexes``: the server's own folder of indexes, named by clients."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "bt" / "server-indexes"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- parsers: text -> a field's value, or ValueError saying what the text is not --------------------------------------


def _count(text: str) -> int:
    if not re.fullmatch(r"\s*\+?\d+\s*", text) or int(text) < 1:
        raise ValueError("not a whole number of at least 1")
    return int(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if not 0 < value < math.inf:
        raise ValueError("not a positive number")
    return value


def _scaled(unit: float) -> Callable[[str], int]:
    return lambda text: max(1, int(_positive(text) * unit))


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except UsageError:
        raise ValueError("not a duration (30s, 5m, 1h or seconds)") from None


def _switch(text: str) -> bool:
    if text.strip().lower() in ("1", "true", "t", "yes", "y", "on"):
        return True
    if text.strip().lower() in ("0", "false", "f", "no", "n", "off"):
        return False
    raise ValueError("not a yes or no (1, true, yes, on; 0, false, no, off)")


def _dtype(text: str) -> str:
    return check_dtype(text.lower())


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("empty")
    return text


def read_key_file(path: Path) -> str:
    """An API key from a file only its owner can read (as ssh keeps a private key): its first line."""
    try:
        mode = os.stat(path).st_mode
        key = Path(path).read_text(encoding="utf-8").split("\n", 1)[0].strip()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read the key file {path}: {getattr(error, 'strerror', None) or error}") from None
    if mode & 0o077:
        raise UsageError(f"the key file {path} is open to other users", f"chmod 600 {path}")
    if not key:
        raise UsageError(f"the key file {path} is empty", "write the key on its first line")
    return key


def _host_name(text: str) -> str:
    name = text.strip().lower().rstrip(".")
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", name):
        raise ValueError("not a host name (no port, no scheme)")
    return name


# -- the table ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting: its field of ``Settings``, flags, variable, default (as written; a callable: computed when
    needed; None: unset), parser and help. A switch (default False) is a flag without a value; a list (``many``, the
    variable's separator) a flag that repeats."""

    field: str
    flags: tuple[str, ...]
    env: str
    default: str | bool | Callable[[], Any] | None
    parse: Callable[[str], Any]
    help: str
    metavar: str = "N"
    many: str | None = None

    @property
    def switch(self) -> bool:
        return self.default is False

    def initial(self) -> Any:
        """The field's value when nothing sets it."""
        if callable(self.default):
            return self.default()
        if isinstance(self.default, str):
            return self.parse(self.default)
        return [] if self.many else self.default

    def read(self, raw: Any, source: str) -> Any:
        """The field's value from ``raw`` (a text; from a command line also a bool or a list of texts), ``source``
        (the flag or the variable) named in the one-line error if it does not parse."""
        if raw is None or isinstance(raw, bool):
            return self.initial() if raw is None else raw
        try:
            if isinstance(raw, (list, tuple)):
                return [self.parse(str(item)) for item in raw]
            if self.many:
                return [self.parse(item) for item in str(raw).split(self.many) if item]
            return self.parse(str(raw))
        except UsageError as error:  # (a check of another room's: it names the value itself)
            raise UsageError(f"{source}: {error.message}", error.hint) from None
        except ValueError as error:
            joint = "=" if source.startswith("BT_") else " "
            example = self.default if isinstance(self.default, str) else self.metavar
            raise UsageError(f"{source}{joint}{str(raw)!r}: {error}", f"e.g. {source}{joint}{example}") from None


# fmt: off
SETTINGS: tuple[Setting, ...] = (
    Setting("models", ("--model", "-m"), "BT_SERVE_MODELS", None, _text,
            "Load at start (repeat for several); other models load on first use.", "ID|DIR", many=","),
    Setting("device", ("--device", "-d"), "BT_DEVICE", "auto", check_device,
            "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.", "DEVICE"),
    Setting("dtype", ("--dtype",), "BT_DTYPE", "auto", _dtype,
            "Weights and compute dtype; auto = float32 (exact). bfloat16 is faster on GPUs; int8 (CPUs) about twice "
            "as fast on CPUs. bfloat16, float16 and int8 are approximate.", "|".join(DTYPES)),
    Setting("threads", ("--threads",), "BT_THREADS", None, _count,
            "CPU threads for the model. Default: PyTorch's (one per core)."),
    Setting("batch_size", ("--batch-size", "-b"), "BT_SERVE_BATCH_SIZE", None, _count,
            "Texts, images or pairs per forward pass. Default: 8 on a CPU, 16 on a GPU."),
    Setting("fast_decode", ("--fast-decode",), "BT_FAST_DECODE", False, _switch,
            "Read JPEGs much larger than the model's input at a reduced scale (2-8x less decoding; the pixels differ "
            "slightly from a full decode, and so do the numbers). Off by default."),
    Setting("keep_alive_s", ("--keep-alive",), "BT_SERVE_KEEP_ALIVE", None, _duration,
            "Unload a model idle this long (30s, 5m, 1h). Default: keep it.", "DURATION"),
    Setting("idle_exit", ("--idle-exit",), "BT_SERVE_IDLE_EXIT", False, _switch,
            "Exit once idle for --keep-alive (the automatic server does)."),
    Setting("api_key", ("--api-key",), "BT_API_KEY", None, _text,
            "The key every request but /health must send (Authorization: Bearer KEY). Without one the server "
            "answers on loopback only.", "KEY"),
    Setting("api_key_file", ("--api-key-file",), "BT_API_KEY_FILE", None, lambda p: Path(p).expanduser(),
            "A file (mode 600) whose first line is the API key: unlike --api-key, not visible to other users in the "
            "process list.", "FILE"),
    Setting("host", ("--host",), "BT_SERVE_HOST", "127.0.0.1", _text,
            "Address to serve on; anything but loopback needs --api-key.", "HOST"),
    Setting("allowed_hosts", ("--allowed-host",), "BT_SERVE_ALLOWED_HOSTS", None, _host_name,
            "Without --api-key, a name besides localhost, 127.0.0.1 and [::1] that requests may give as their Host "
            "(repeat; the variable: comma-separated). Any other is refused: a web page cannot reach the server by "
            "DNS rebinding.", "NAME", many=","),
    Setting("allow_paths", ("--allow-path",), "BT_SERVE_ALLOW_PATHS", None, lambda p: Path(p).expanduser().resolve(),
            "A folder under which clients may name images and indexes for retrieve (repeat; the variable: "
            f"folders separated by {os.pathsep!r}). Default: none.", "DIR", many=os.pathsep),
    Setting("index_dir", ("--index-dir",), "BT_SERVE_INDEX_DIR", default_index_dir, lambda p: Path(p).expanduser(),
            "The server's own folder of indexes, which requests name (default $XDG_CACHE_HOME/bt/server-indexes).",
            "DIR"),
    Setting("no_pull", ("--no-pull",), "BT_SERVE_NO_PULL", False, _switch,
            "Serve only the models given with -m, not the public checkpoints."),
    Setting("max_models", ("--max-models",), "BT_SERVE_MAX_MODELS", "2", _count,
            "Models loaded at once (the least recently used idle one unloads)."),
    Setting("max_body_bytes", ("--max-body",), "BT_SERVE_MAX_BODY_MB", "64", _scaled(2**20),
            "Largest request body, in MiB (413 beyond).", "MB"),
    Setting("body_timeout_s", ("--body-timeout",), "BT_SERVE_BODY_TIMEOUT", "60s", _duration,
            "For a request's whole body to arrive (408 past it): slow uploads hold no memory.", "DURATION"),
    Setting("max_image_bytes", ("--max-image",), "BT_SERVE_MAX_IMAGE_MB", "32", _scaled(2**20),
            "Largest image in a request, in MiB (413 beyond).", "MB"),
    Setting("max_texts", ("--max-texts",), "BT_SERVE_MAX_TEXTS", "1024", _count, "Texts per request (413 beyond)."),
    Setting("max_images", ("--max-images",), "BT_SERVE_MAX_IMAGES", "256", _count,
            "Images per request, and sources per retrieve (413 beyond)."),
    Setting("max_pairs", ("--max-pairs",), "BT_SERVE_MAX_PAIRS", "100000", _count,
            "Image x text pairs per request (413 beyond, before any work)."),
    Setting("max_candidates", ("--max-candidates",), "BT_SERVE_MAX_CANDIDATES", "1000000", _count,
            "Fill-mask candidates per request: images x masks x top-k (413 beyond, before any work)."),
    Setting("decode_pixels", ("--decode-budget",), "BT_SERVE_DECODE_BUDGET_MP", "89.5", _scaled(1e6),
            "Megapixels decoding at once, all requests together; a larger image is refused, others wait.", "MP"),
    Setting("request_timeout_s", ("--request-timeout",), "BT_SERVE_REQUEST_TIMEOUT", "10m", _duration,
            "A request's deadline (504 past it; its work stops at the next batch).", "DURATION"),
    Setting("graceful_timeout_s", ("--graceful-timeout",), "BT_SERVE_GRACEFUL_TIMEOUT", "30s", _duration,
            "On SIGTERM: how long requests in flight may finish before they are cancelled.", "DURATION"),
    Setting("max_waiting", ("--max-waiting",), "BT_SERVE_MAX_WAITING", "64", _count,
            "Requests in per model (running or queued); past it 503 + Retry-After."),
    Setting("batch_window_s", ("--batch-window",), "BT_SERVE_BATCH_WINDOW", "0.005", _duration,
            "How long a model's worker waits to fuse concurrent requests' pairs into one batch, in seconds.",
            "SECONDS"),
)
# fmt: on
SETTING = {setting.field: setting for setting in SETTINGS}


def _default(name: str):
    return field(default_factory=SETTING[name].initial)


@dataclass
class Settings:
    """``bt serve`` fills it from its options and the environment, an ASGI runner from the environment
    (``from_env``); every field but ``own`` is a row of ``SETTINGS``, its default the table's."""

    models: list[str] = _default("models")  # loaded at start; with the catalog's, all a request may name
    device: str = _default("device")
    dtype: str = _default("dtype")
    threads: int | None = _default("threads")
    batch_size: int | None = _default("batch_size")
    fast_decode: bool = _default("fast_decode")  # JPEGs read at a reduced scale (images.decode_image)
    keep_alive_s: float | None = _default("keep_alive_s")  # unload a model idle this long (None: never)
    api_key: str | None = _default("api_key")
    api_key_file: Path | None = _default("api_key_file")  # read into api_key when made
    host: str = _default("host")  # where it listens: beyond loopback the app refuses to start without a key
    allowed_hosts: list[str] = _default("allowed_hosts")  # Host names served without a key, besides loopback's
    allow_paths: list[Path] = _default("allow_paths")
    index_dir: Path = _default("index_dir")
    no_pull: bool = _default("no_pull")  # only the models given, not the public checkpoints of the catalog
    max_models: int = _default("max_models")  # loaded at once; the least recently used idle one unloads for another
    max_body_bytes: int = _default("max_body_bytes")
    body_timeout_s: float = _default("body_timeout_s")  # for a request's whole body (408 past it)
    max_image_bytes: int = _default("max_image_bytes")
    max_texts: int = _default("max_texts")  # per request
    max_images: int = _default("max_images")  # per request (and sources per retrieve)
    max_pairs: int = _default("max_pairs")  # image x text pairs per request
    max_candidates: int = _default("max_candidates")  # fill-mask candidates per request (images x masks x top_k)
    decode_pixels: int = _default("decode_pixels")  # decoding at once, all requests together (~14 bytes each)
    request_timeout_s: float | None = _default("request_timeout_s")  # 504 past it; the work stops at the next batch
    graceful_timeout_s: float = _default("graceful_timeout_s")  # on SIGTERM, how long requests in flight may run
    max_waiting: int = _default("max_waiting")  # requests admitted per model (running or queued); past it, 503
    batch_window_s: float = _default("batch_window_s")
    idle_exit: bool = _default("idle_exit")  # exit once idle for keep_alive_s (the automatic server)
    own: bool = False  # a server of one user's own (bt serve --uds): requests act with that user's rights, as bt does

    def __post_init__(self):
        if self.api_key_file is not None and self.api_key is None:
            self.api_key = read_key_file(self.api_key_file)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, given: Mapping[str, Any] | None = None) -> Settings:
        """The settings from the environment (``os.environ`` unless given), under ``given`` (by field: what a
        command line set), over the table's defaults. A value that does not parse is a one-line ``UsageError``
        naming its variable (or flag)."""
        env = os.environ if environ is None else environ
        given = given or {}
        values = {}
        for setting in SETTINGS:
            if setting.field in given:
                values[setting.field] = setting.read(given[setting.field], setting.flags[0])
            elif env.get(setting.env):
                values[setting.field] = setting.read(env[setting.env], setting.env)
        for key, other in (("api_key", "api_key_file"), ("api_key_file", "api_key")):
            if key in given and other not in given:
                values.pop(other, None)  # (the key given on the command line, over one in the environment)
        if values.get("api_key") is not None and values.get("api_key_file") is not None:
            raise UsageError("--api-key and --api-key-file exclude each other", "give the key one way")
        settings = cls(**values)
        if settings.idle_exit and settings.keep_alive_s is None:
            raise BtError("exiting when idle needs a keep-alive", "e.g. --idle-exit --keep-alive 10m")
        return settings

    def refuse_exposure(self, *hosts: str) -> None:
        """No key, loopback only: serving on ``host`` or any of ``hosts`` beyond this machine without a key is an
        error (a server of one's own listens on a Unix socket of its own)."""
        if self.api_key is None and not self.own:
            for host in (self.host, *hosts):
                if not is_loopback(host):
                    raise BtError(
                        f"serving on {host} (beyond this machine) needs an API key",
                        "pass --api-key KEY or set BT_API_KEY, or serve on 127.0.0.1",
                    )

    def check_models(self) -> None:
        """Each model to load at start is there: a missing one is one line now, not a failed start-up later."""
        from ..model.hub import resolve_checkpoint

        for model in self.models:
            resolve_checkpoint(model)

    def of_own(self) -> Settings:
        """These settings for a server of one's own (``bt serve --uds``): as bt in process, with the user's rights (no
        key, no roots), without a request's limits on counts or a deadline (Ctrl-C on the client cancels)."""
        return dataclasses.replace(self, own=True, **{name: copy.copy(value) for name, value in OWN.items()})


# What a server of one's own sets whatever it is given.
OWN = {
    "api_key": None,
    "api_key_file": None,
    "host": "127.0.0.1",
    "allow_paths": [],
    "max_body_bytes": 2**40,
    "max_image_bytes": 2**40,
    "max_texts": sys.maxsize,
    "max_images": sys.maxsize,
    "max_pairs": sys.maxsize,
    "max_candidates": sys.maxsize,
    "request_timeout_s": None,
    "body_timeout_s": 600.0,
}
