"""The ``bt`` command line: a thin Typer layer over the library."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """``bt``: the top-level help printed without Typer (``listing``); a plain command line parsed without it
    (``quick``); anything else by the Typer app."""
    import os

    arguments = sys.argv[1:] if argv is None else argv
    if arguments in (["--help"], ["-h"]):
        from .listing import print_help

        return print_help()
    from .quick import run as quickly

    quickly(arguments, dict(os.environ))
    from .app import main as run

    return run(arguments)


__all__ = ["main"]
