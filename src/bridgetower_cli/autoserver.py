"""The automatic server (``--server auto``, env ``BT_SERVER=auto``), as ollama's or a build daemon's: the first call
starts ``bt serve --uds`` detached, on a Unix socket in a private runtime folder (0700; the socket 0600, so no other
user can connect and no key is needed); later calls use it; it exits after ``BT_KEEP_ALIVE`` idle (default 10 min,
its models unloaded first). One started by another bt version, Python or set of server options is replaced. Two
first calls at once start one server (a lock file). A server that cannot start is an ``AutoServerFailed`` naming
its log; the caller then runs in process.

The folder: ``$XDG_RUNTIME_DIR/bt`` (else ``<tmp>/bt-<uid>``) holds ``server.sock``, ``server.lock``,
``server.json`` (the pid and identity of the server started last) and ``server.log``."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import stat
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import BtError
from .records import Record

DEFAULT_KEEP_ALIVE = "10m"
START_TIMEOUT_S = 60.0  # for a new server to answer (it imports the server stack; models load on first use)
STOP_TIMEOUT_S = 10.0  # for a replaced server to stop listening
PROBE_S = 2.0  # for a health probe's answer: a server silent that long (three probes in a row) is wedged
LOG_BYTES = 2**20
LOCK_TIMEOUT_S = START_TIMEOUT_S + STOP_TIMEOUT_S + 5  # another call starting one holds the lock this long at most


@dataclass
class ServerStatus(Record):
    """The automatic server as `bt serve --status` shows it."""

    socket: str
    log: str
    pid: int
    uptime_s: float
    models: list[str]
    requests: int  # in flight now
    cancelled: int  # stopped by their client (Ctrl-C), a deadline or a shutdown, since it started
    rss_mb: float | None
    idle_exit_s: float | None
    rankings: int = 0  # searches ranked since it started (a page's later pages rank none)


class AutoServerFailed(BtError):
    """The automatic server could not be started or reached (the call runs in process instead)."""


@dataclass(frozen=True)
class ServerOptions:
    """What a server is started with, beyond the models requests name: these make its identity."""

    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    batch_size: int | None = None
    keep_alive: str = DEFAULT_KEEP_ALIVE
    fast_decode: bool = False

    def arguments(self, socket: Path) -> list[str]:
        args = ["serve", "--uds", str(socket), "--idle-exit", "--keep-alive", self.keep_alive]
        args += ["--device", self.device, "--dtype", self.dtype]
        args += ["--threads", str(self.threads)] if self.threads else []
        args += ["--batch-size", str(self.batch_size)] if self.batch_size else []
        args += ["--fast-decode"] if self.fast_decode else []
        return args

    def identity(self) -> str:
        """bt's version, the Python environment, these options and the environment the server reads: a server
        started with any other is not this one."""
        from . import __version__

        environment = {name: value for name, value in os.environ.items() if reads(name)}
        interpreter = os.path.realpath(sys.executable)  # (python and python3 of one environment: one server)
        facts = [__version__, interpreter, sys.prefix, self.arguments(Path("socket")), sorted(environment.items())]
        return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


# What the server process reads from its environment (the rest of it is the caller's and changes nothing there):
# the variables of the server's settings table that a server of one's own heeds (``server.settings.SETTINGS``: every
# ``BT_SERVE_*`` and the model settings the commands share; a test holds the table to this), and those of the layers
# below it.
SERVER_PREFIX = "BT_SERVE_"
SERVER_ENVIRONMENT = (
    "BT_DEVICE",
    "BT_DTYPE",
    "BT_THREADS",
    "BT_FAST_DECODE",
    "BT_MAX_IMAGE_PIXELS",
    "BT_DECODE_WORKERS",
    "BT_INT8_CACHE",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "XDG_CACHE_HOME",
)


def reads(name: str) -> bool:
    """Whether the server reads the environment variable ``name`` (so that it is part of its identity)."""
    return name.startswith(SERVER_PREFIX) or name in SERVER_ENVIRONMENT


def runtime_folder() -> Path:
    """The private folder of the automatic server: made 0700 if need be; refused if it is not this user's alone."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        folder = Path(base) / "bt"
    else:
        import tempfile  # (here only: a warm call imports no more than it uses)

        folder = Path(tempfile.gettempdir()) / f"bt-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    found = os.lstat(folder)
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid() or found.st_mode & 0o077:
        raise AutoServerFailed(
            f"the automatic server's folder {folder} is not private (a link, someone else's, or open to others)",
            "remove it, or set XDG_RUNTIME_DIR to a private folder (mode 0700)",
        )
    return folder


@dataclass
class Place:
    """The automatic server's files."""

    folder: Path

    @property
    def socket(self) -> Path:
        return self.folder / "server.sock"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    @property
    def record(self) -> Path:
        return self.folder / "server.json"

    def started(self) -> dict:
        """What server.json says of the server started last ({} if nothing)."""
        try:
            found = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    @contextlib.contextmanager
    def locked(self):
        """The start lock: one call at a time checks, replaces and starts the server."""
        descriptor = os.open(self.folder / "server.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise AutoServerFailed(
                            f"another bt call has been starting the automatic server for {LOCK_TIMEOUT_S:g} s",
                            f"see {self.log}",
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(descriptor)  # (closing releases the lock)


def connect(options: ServerOptions, timeout_s: float | None = None):
    """A client of the automatic server for ``options``: the running one if it is ours and answers, else a new one
    started now (replacing one of another identity)."""
    from .client import Client

    place, identity = Place(runtime_folder()), options.identity()
    client = Client(f"unix:{place.socket}", timeout_s=timeout_s, socket=str(place.socket), own=True)
    if place.started().get("identity") == identity and _answers(client):
        return client
    with place.locked():  # (another call may have started it meanwhile: look again)
        started = place.started()
        if started.get("identity") == identity and _answers(client):
            return client
        if _answers(client):
            stop(place, client)
        else:
            _end_wedged(place)
        _start(place, options, identity)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(client):
            if not _alive(place.started().get("pid")) or time.monotonic() > deadline:
                raise AutoServerFailed(f"the automatic bt server did not start (see {place.log})")
            time.sleep(0.05)
    return client


def _start(place: Place, options: ServerOptions, identity: str) -> None:
    """``bt serve --uds`` detached: a session of its own (no terminal signal reaches it), a child of init (no zombie
    of this process, which may live long: a Python program), its output to the log (one line per start first; the
    log starts afresh past ``LOG_BYTES``)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
    with open(os.open(place.log, flags, 0o600), "ab") as log:
        if os.fstat(log.fileno()).st_size > LOG_BYTES:
            log.truncate(0)
        log.write(f"bt: {time.strftime('%Y-%m-%d %H:%M:%S')} starting the automatic server ({identity})\n".encode())
    server = [sys.executable, "-m", "bridgetower_cli", *options.arguments(place.socket)]
    # sh starts the server in the background and says its pid; the server outlives sh, which exits at once.
    detach = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
    import subprocess  # (starting one only)

    spawned = subprocess.run(
        ["/bin/sh", "-c", detach, "sh", str(place.log), *server],
        capture_output=True,
        text=True,
        start_new_session=True,
        cwd=place.folder,
        timeout=30,
    )
    if spawned.returncode != 0 or not spawned.stdout.strip().isdigit():
        raise AutoServerFailed(f"the automatic bt server could not be started ({spawned.stderr.strip()[:200]})")
    record = {"pid": int(spawned.stdout), "identity": identity, "socket": str(place.socket), "started": time.time()}
    temporary = place.record.with_suffix(".tmp")
    temporary.write_text(json.dumps(record))
    temporary.replace(place.record)


def _answers(client) -> bool:
    """Whether a bt server answers on the client's socket within ``PROBE_S`` (a stale socket file refuses at once; a
    wedged server, stopped or stuck, accepts and never answers)."""
    if not os.path.exists(client.socket):
        return False
    try:
        return client.get("/health", connect_s=PROBE_S, read_s=PROBE_S).get("status") == "ok"
    except BtError:
        return False


def wedged(place: Place | None = None) -> int | None:
    """The pid of the automatic server if it runs (its record's pid, serving on this socket) but does not answer."""
    from .client import Client

    place = place or Place(runtime_folder())
    pid = place.started().get("pid")
    if not _alive(pid) or not _serves(pid, place.socket):
        return None
    client = Client(f"unix:{place.socket}", socket=str(place.socket), own=True)
    return None if _answers(client) else pid


def _serves(pid: int, socket: Path) -> bool:
    """Whether process ``pid`` is a bt server on ``socket`` (its command line says so: not a reused pid)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"--uds" in command and str(socket).encode() in command


def _end_wedged(place: Place) -> int | None:
    """End a server that does not answer: SIGTERM (and SIGCONT, for a stopped one), then SIGKILL; its pid."""
    pid = wedged(place)
    if pid is None:
        return None
    for ending, wait_s in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, ending)
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + wait_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            break
    return pid


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A child that exited and was not reaped yet (it answers kill 0 but is gone)."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


def status(place: Place | None = None) -> ServerStatus | None:
    """The running automatic server's status (socket, pid, uptime, models, memory), None if none answers."""
    from .client import Client

    place = place or Place(runtime_folder())
    client = Client(f"unix:{place.socket}", timeout_s=10.0, socket=str(place.socket), own=True)
    if not _answers(client):
        return None
    known = {f.name for f in fields(ServerStatus)}  # (what another bt's server adds is left out)
    answer = {k: v for k, v in client.get("/v1/status").items() if k in known}
    return ServerStatus(str(place.socket), str(place.log), **answer)


def stop(place: Place | None = None, client=None) -> int | None:
    """Stop the automatic server (SIGTERM to the pid its socket reports: requests in flight get its graceful time),
    waiting until it no longer listens; its pid, or None if none answered."""
    place = place or Place(runtime_folder())
    found = status(place)
    if found is None:
        return _end_wedged(place)
    pid = found.pid
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    from .client import Client

    client = client or Client(f"unix:{place.socket}", socket=str(place.socket), own=True)
    while _answers(client) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid
