"""Opening the files bt reads, by one rule: regular files only (a FIFO named ``x.jpg`` never blocks a walk), at most
``max_bytes`` (a server's ``--max-image``), and, in a server, only a file whose real path — the one the kernel
opened, not the one named — lies inside its roots, so a link swapped in after a check cannot lead out of them. The
rule holds for the thread reading on a request's behalf (``restricted``); elsewhere bt reads what its user names."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .errors import InputError


@dataclass(frozen=True)
class ReadPolicy:
    roots: tuple[str, ...] | None = None  # real paths; None: anywhere (the CLI reads what its user names)
    max_bytes: int | None = None


_local = threading.local()


@contextlib.contextmanager
def restricted(policy: ReadPolicy) -> Iterator[None]:
    """Read under ``policy`` in this thread (a server's request threads: its roots and its cap)."""
    previous = getattr(_local, "policy", None)
    _local.policy = policy
    try:
        yield
    finally:
        _local.policy = previous


def _policy() -> ReadPolicy:
    return getattr(_local, "policy", None) or ReadPolicy()


def inside(path: str, roots) -> bool:
    """Whether a real (resolved) path lies in one of the real ``roots``."""
    return any(path == root or path.startswith(os.path.join(root, "")) for root in roots)


def _opened_path(fd: int, named: str) -> str:
    """The real path of an open file: where the kernel resolved it (Linux), else the name resolved now."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(named)


def open_file(path: str) -> BinaryIO:
    """``path`` opened for reading under the process's rule (raises InputError with the reason)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        reason = "a dangling symlink" if os.path.islink(path) else f"cannot read it: {error.strerror or error}"
        raise InputError(reason) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError("not a regular file")
        roots = _policy().roots
        if roots is not None and not inside(_opened_path(fd, path), roots):
            raise InputError("is a link out of the served folders")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_file(path: str) -> bytes:
    """The bytes of a file under the process's rule."""
    limit = _policy().max_bytes
    with open_file(path) as file:
        data = file.read() if limit is None else file.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise InputError(f"larger than {limit // 2**20} MiB")
    return data
