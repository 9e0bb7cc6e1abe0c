"""The one way bt makes a console (rich, imported with the first console: a call that prints nothing to the
terminal never imports it)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console


def console(stream: TextIO | None = None) -> Console:
    """A console on ``stream`` (None: stderr), colour off under NO_COLOR, no highlighting."""
    from rich.console import Console

    if stream is None:
        return Console(stderr=True, no_color="NO_COLOR" in os.environ, highlight=False)
    return Console(file=stream, no_color="NO_COLOR" in os.environ, highlight=False)


def stderr_console() -> Console:
    return console()
