"""The one exception type the library raises for problems a user can fix."""

from __future__ import annotations


class BtError(Exception):
    """A user-facing error: a one-line message and a hint on what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class InputError(BtError):
    """One input (an image or a text) cannot be used; batch work skips it and goes on."""


class PartialSuccess(BtError):
    """The work is done, but some inputs were skipped (each reported as it happened): exit status 3."""

    exit_code = 3


class StdoutClosed(Exception):
    """Whoever read stdout has gone (``bt ... | head -1``): not an error, the end of the run."""
