"""The server's own folder (``--index-dir``: its indexes and thumbnails), reached only through directories verified
at every use: each opened without following a link and checked by its descriptor (owned by the server's user,
writable by nobody else), every folder above it owned by root or that user and writable by no one else unless sticky
(as /tmp), made 0700 when missing. Files in it are opened, created (``O_EXCL``) and renamed relative to the verified
descriptors, never through a link: nobody else can plant a link there for the server to follow, or read a file
through it."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from ..errors import BtError

FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _refused(path, why: str) -> BtError:
    """The server's own folder is not as it must be: the server's fault, not the request's (500)."""
    refusal = BtError(f"the server's folder {path} is not its own ({why})", f"chmod 700 {path}, or another --index-dir")
    refusal.status = 500
    return refusal


def _checked(descriptor: int, path) -> int:
    """``descriptor`` if the folder it opened is the server user's and no one else may write in it."""
    found = os.fstat(descriptor)
    if found.st_uid != os.geteuid():
        os.close(descriptor)
        raise _refused(path, "owned by another user")
    if found.st_mode & 0o022:
        os.close(descriptor)
        raise _refused(path, "writable by others")
    return descriptor


def _ancestors_safe(path: Path) -> None:
    """Every folder above ``path``: owned by root or this user, and writable by no one else unless sticky."""
    for above in path.parents:
        found = os.stat(above)
        if found.st_uid not in (0, os.geteuid()) or (found.st_mode & 0o022 and not found.st_mode & stat.S_ISVTX):
            raise _refused(path, f"{above} above it may be changed by another user")


def _opened(name: str, path, parent: int | None = None) -> int:
    """A folder opened without following a link (made 0700 when missing), verified."""
    for attempt in range(2):
        try:
            return _checked(os.open(name, FOLDER, dir_fd=parent), path)
        except FileNotFoundError:
            if attempt:
                raise
            with contextlib.suppress(FileExistsError):  # (made meanwhile: opened and verified as any other)
                os.mkdir(name, 0o700, dir_fd=parent)
        except NotADirectoryError:
            raise _refused(path, "a link or not a folder") from None
        except OSError as error:
            if error.errno == 40:  # ELOOP: the last component is a link
                raise _refused(path, "a link") from None
            raise
    raise AssertionError("unreachable")


class OwnedFolder:
    """``--index-dir``, verified at every use (see the module's docstring)."""

    def __init__(self, path: Path):
        self.path = Path(os.path.abspath(path))

    @contextlib.contextmanager
    def opened(self, *names: str) -> Iterator[int]:
        """The descriptor of the folder (or of ``names`` below it, each made and verified in turn), verified now."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _ancestors_safe(self.path)
        descriptors = [_opened(str(self.path), self.path)]
        try:
            for name in names:
                descriptors.append(_opened(name, self.path / name, descriptors[-1]))
            yield descriptors[-1]
        finally:
            for descriptor in descriptors:
                os.close(descriptor)

    def verify(self) -> Path:
        """The folder's path, once verified (an index file in it is then guarded by the index's own rules)."""
        with self.opened():
            return self.path

    def read(self, folder: int, name: str) -> bytes | None:
        """A regular file in ``folder`` (a descriptor from ``opened``), never through a link; None if missing."""
        try:
            descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == 40:  # ELOOP: a link where a file of the server's should be
                raise _refused(self.path, f"{name} is a link") from None
            raise
        with os.fdopen(descriptor, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise _refused(self.path, f"{name} is not a regular file")
            return file.read()

    def write(self, folder: int, name: str, data: bytes) -> None:
        """``data`` as ``name`` in ``folder``: a new file (``O_EXCL``, an unguessable name) renamed over it, both
        relative to the verified descriptor (a rename replaces a link, never follows it)."""
        partial = f".{secrets.token_hex(8)}.partial"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        descriptor = os.open(partial, flags, 0o600, dir_fd=folder)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
            os.replace(partial, name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial, dir_fd=folder)
            raise
