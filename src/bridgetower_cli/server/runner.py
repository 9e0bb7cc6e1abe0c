"""What an ASGI runner (uvicorn, gunicorn) was told and what this process listens on: the addresses it serves on
(its command line, its environment, and the sockets already listening: gunicorn binds before it loads the app), and
the Unix sockets it serves on, made 0600 when no key guards them. Linux's /proc; elsewhere the command line and the
environment only. Light: the standard library only."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import socket
import stat
import sys
from collections.abc import Mapping, Sequence

LISTEN = "0A"  # a TCP socket's state in /proc/net/tcp: listening
ACCEPTING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix: a listening Unix socket


def option_values(args: Sequence[str], names: Sequence[str]) -> list[str]:
    """Every value given to one of ``names`` in ``args``: ``--host X``, ``--host=X``, ``-b X`` and ``-bX``."""
    found = []
    for k, arg in enumerate(args):
        for name in names:
            if arg == name and k + 1 < len(args):
                found.append(args[k + 1])
            elif name.startswith("--") and arg.startswith(name + "="):
                found.append(arg[len(name) + 1 :])
            elif not name.startswith("--") and arg.startswith(name) and len(arg) > len(name):
                found.append(arg[len(name) :])
    return found


def _bind_host(bind: str) -> str | None:
    """The host of a gunicorn ``--bind`` (``HOST``, ``HOST:PORT``, ``[V6]:PORT``, ``tcp://...``); None for a Unix
    socket or a descriptor. An empty host is every address, as gunicorn takes it."""
    if bind.startswith(("unix:", "fd://")):
        return None
    bind = bind.removeprefix("tcp://").removeprefix("http://")
    if bind.startswith("["):
        return bind[1:].split("]", 1)[0]
    host = bind.rsplit(":", 1)[0] if bind.count(":") == 1 else bind
    return host or "0.0.0.0"


def told_hosts(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """The addresses the runner was told to serve on: uvicorn's ``--host`` or ``UVICORN_HOST``, gunicorn's
    ``--bind``/``-b`` (also in ``GUNICORN_CMD_ARGS``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    hosts = option_values(args, ("--host",))
    if env.get("UVICORN_HOST"):
        hosts.append(env["UVICORN_HOST"])
    try:
        gunicorn = shlex.split(env.get("GUNICORN_CMD_ARGS", ""))
    except ValueError:
        gunicorn = []
    for bind in option_values([*args, *gunicorn], ("--bind", "-b")):
        hosts.append(_bind_host(bind))
    return [host for host in hosts if host is not None]


def _socket_inodes() -> set[str]:
    """The inodes of the sockets this process holds open."""
    found = set()
    with contextlib.suppress(OSError):
        for descriptor in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{descriptor}")
                if target.startswith("socket:["):
                    found.add(target[len("socket:[") : -1])
    return found


def _address(hexadecimal: str) -> str:
    """An address as /proc/net/tcp writes it (32-bit words in the machine's byte order)."""
    words = [int(hexadecimal[k : k + 8], 16).to_bytes(4, sys.byteorder) for k in range(0, len(hexadecimal), 8)]
    address = ipaddress.ip_address(b"".join(words))
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def listening_hosts() -> list[str]:
    """The addresses of the TCP sockets this process listens on (bound by the runner before the app loaded)."""
    inodes, found = _socket_inodes(), []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                lines = rows.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            columns = line.split()
            if len(columns) > 9 and columns[3] == LISTEN and columns[9] in inodes:
                found.append(_address(columns[1].split(":")[0]))
    return found


def hosts(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every address this process serves on or was told to."""
    return [*told_hosts(argv, environ), *listening_hosts()]


def listening_unix_paths() -> list[str]:
    """The paths of the Unix sockets this process listens on."""
    inodes, found = _socket_inodes(), []
    try:
        with open("/proc/net/unix") as rows:
            lines = rows.read().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        columns = line.split(maxsplit=7)
        listening = len(columns) == 8 and columns[6] in inodes and int(columns[3], 16) & ACCEPTING
        if listening and not columns[7].startswith("@"):  # (an abstract socket has no file)
            found.append(columns[7])
    return found


def secure_unix_sockets(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Unix sockets for a server without a key, 0600 (only this user can connect: the app then trusts a connection
    as local). Those listening already (gunicorn's ``--bind unix:PATH``) are made 0600 now; for uvicorn's
    ``--uds PATH`` (or ``UVICORN_UDS``), which binds after the app starts and keeps the mode of a file it finds
    there, a placeholder socket of mode 0600 is bound there if nothing is."""
    for path in listening_unix_paths():
        _tighten(path)
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    for path in [*option_values(args, ("--uds",)), *([env["UVICORN_UDS"]] if env.get("UVICORN_UDS") else [])]:
        if not os.path.lexists(path):
            _placeholder(path)
        else:
            _tighten(path)


def _tighten(path: str) -> None:
    """A socket of this user's at ``path``: its mode 0600."""
    with contextlib.suppress(OSError):
        found = os.lstat(path)
        if stat.S_ISSOCK(found.st_mode) and found.st_uid == os.geteuid() and found.st_mode & 0o177:
            os.chmod(path, 0o600)


def _placeholder(path: str) -> None:
    """A socket file of mode 0600 at ``path``, nobody listening: the server that binds there replaces it and keeps
    its mode."""
    placeholder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    previous = os.umask(0o177)
    try:
        with contextlib.suppress(OSError):
            placeholder.bind(path)
    finally:
        os.umask(previous)
        placeholder.close()
