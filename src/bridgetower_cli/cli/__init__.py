"""The ``bt`` command line: a thin Typer layer over the library."""

from .app import main

__all__ = ["main"]
