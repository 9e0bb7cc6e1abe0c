"""Typed errors: each carries a one-line message, a hint, the exit code the CLI ends with and the HTTP status a
server answers with. The library raises them; the CLI's error boundary and the server's handlers render them."""

from __future__ import annotations


class BtError(Exception):
    """A problem the user can fix: a one-line message and a hint on what to do about it."""

    exit_code = 1
    status = 422  # as an HTTP answer: the request, as sent, cannot be served

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class UsageError(BtError):
    """A command line that cannot mean anything (an unknown device, a value that does not parse): exit status 2."""

    exit_code = 2


class InputError(BtError):
    """One input (an image or a text) cannot be used; batch work skips it and goes on."""


class NotFound(BtError):
    status = 404


class Forbidden(BtError):
    """Outside what a server may touch (its roots, its models, its indexes)."""

    status = 403


class Unauthorized(BtError):
    status = 401


class TooLarge(BtError):
    """Over a size limit (a body, an image, a count)."""

    status = 413


class Busy(BtError):
    """Not now: too much waits already, or another process holds what is needed. A retry may succeed."""

    status = 503

    def __init__(self, message: str, hint: str | None = None, retry_after_s: int = 1):
        super().__init__(message, hint)
        self.retry_after_s = retry_after_s


class Cancelled(BtError):
    """The work was stopped: its client went away, its deadline passed, or the server is shutting down."""

    status = 503


class DeadlineExceeded(Cancelled):
    status = 504


class NoSpace(BtError):
    """A disk (or a quota) full: said as such, never as damage; what was written before stays valid."""

    status = 507


class IndexDamaged(BtError):
    """An index whose files disagree with each other: named, with the safe repair."""


class PartialSuccess(BtError):
    """The work is done, but some inputs were skipped (each reported as it happened): exit status 3."""

    exit_code = 3


class Interrupted(BtError):
    """Ctrl-C: what was done is said (and kept); exit status 130, as a shell reports SIGINT."""

    exit_code = 130
    INDEXING = "indexing images"  # the progress bar whose count an interrupted refresh reports

    @classmethod
    def indexing(cls, done: int, total: int) -> Interrupted:
        """An index refresh stopped: its batches so far are committed (in process, or on the server)."""
        return cls(f"interrupted: {done} of {total} images indexed; run again to resume")


class StdoutClosed(Exception):
    """Whoever read stdout has gone (``bt ... | head -1``): not an error, the end of the run."""
