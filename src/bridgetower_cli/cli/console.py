"""The one way bt makes a console (light: an error message needs nothing more)."""

from __future__ import annotations

import os
from typing import TextIO

from rich.console import Console


def console(stream: TextIO | None = None) -> Console:
    """A console on ``stream`` (None: stderr), colour off under NO_COLOR, no highlighting."""
    if stream is None:
        return Console(stderr=True, no_color="NO_COLOR" in os.environ, highlight=False)
    return Console(file=stream, no_color="NO_COLOR" in os.environ, highlight=False)


def stderr_console() -> Console:
    return console()
