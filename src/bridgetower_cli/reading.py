"""Reading an image source's bytes (a file, a URL, bytes already read), every file opened by one rule: regular
files only (a FIFO named ``x.jpg`` never blocks a walk), at most ``max_bytes`` (a server's ``--max-image``), and, in
a server, only a file whose real path — the one the kernel opened, not the one named — lies inside its roots, so a
link swapped in after a check cannot lead out of them. The rule holds for the thread reading on a request's behalf
(``restricted``); elsewhere bt reads what its user names."""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from typing import BinaryIO

from .cancel import bound
from .errors import InputError


@dataclass(frozen=True)
class ReadPolicy:
    roots: tuple[str, ...] | None = None  # real paths; None: anywhere (the CLI reads what its user names)
    max_bytes: int | None = None


URL_TIMEOUT_S = (5.0, 20.0)  # connect, read
URL_MAX_BYTES = 50 * 1024 * 1024
_local = threading.local()


def restricted(policy: ReadPolicy):
    """Read under ``policy`` in this thread (a server's request threads: its roots and its cap)."""
    return bound(_local, "policy", policy)


def current_policy() -> ReadPolicy:
    """What this thread reads under (a thread working for another passes it on with ``restricted``)."""
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


KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFDIR: "a folder",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def kind_of(mode: int) -> str:
    """What a file that is not a regular one is, in words."""
    return KINDS.get(stat.S_IFMT(mode), "not a regular file")


def open_file(path: str) -> BinaryIO:
    """``path`` opened for reading under the process's rule (raises InputError with the reason)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        reason = "a dangling symlink" if os.path.islink(path) else f"cannot read it: {error.strerror or error}"
        raise InputError(reason) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(f"not a regular file ({kind_of(mode)})")
        roots = current_policy().roots
        if roots is not None and not inside(_opened_path(fd, path), roots):
            raise InputError("is a link out of the served folders")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_file(path: str) -> bytes:
    """The bytes of a file under the process's rule."""
    limit = current_policy().max_bytes
    with open_file(path) as file:
        data = file.read() if limit is None else file.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise InputError(f"larger than {limit // 2**20} MiB")
    return data


def read_bytes(source) -> bytes:
    """The raw bytes of a source: bytes already read, a file (``reading.read_file``: regular, capped, inside a
    server's roots), or a URL fetched with a timeout and a size cap."""
    if source.data is not None:
        return source.data
    if not source.is_url:
        return read_file(source.path)
    return _fetch(source.url)


def _fetch(url: str) -> bytes:
    import requests

    too_large = f"larger than {URL_MAX_BYTES // 2**20} MiB"
    try:
        with requests.get(url, timeout=URL_TIMEOUT_S, stream=True) as response:
            if response.status_code != 200:
                raise InputError(f"HTTP {response.status_code} {response.reason}")
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if content_type and not content_type.startswith("image/") and content_type != "application/octet-stream":
                raise InputError(f"not an image (Content-Type {content_type})")
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > URL_MAX_BYTES:
                raise InputError(too_large)
            chunks, size = [], 0
            for chunk in response.iter_content(64 * 1024):
                size += len(chunk)
                if size > URL_MAX_BYTES:
                    raise InputError(too_large)
                chunks.append(chunk)
            return b"".join(chunks)
    except requests.Timeout:
        raise InputError(f"no answer within {URL_TIMEOUT_S[1]:.0f} s") from None
    except requests.RequestException as error:
        raise InputError(f"cannot fetch it: {type(error).__name__}") from None


def load_image(source):
    """Read and decode one source to an RGB PIL image (raises InputError with the reason)."""
    from .images import decode_image

    return decode_image(read_bytes(source))
