"""The one interface the commands (and the Python API) call: the work done in this process (``Local``) or by a bt
server (``Remote``; the automatic one: ``Auto``), chosen once by ``open_backend``. Either way the records, their
order, the skips and the messages are the same, so what the user sees does not depend on where the work ran."""

from __future__ import annotations

from .base import Backend, ModelOptions, located
from .local import Local
from .remote import Auto, Remote

__all__ = [
    "Auto",
    "Backend",
    "Local",
    "ModelOptions",
    "Remote",
    "located",
    "open_backend",
]


def open_backend(
    options: ModelOptions,
    server: str | None = None,
    api_key: str | None = None,
    timeout: float | None = None,
    warn=lambda message: None,
) -> Backend | Auto:
    """The backend for a command: a bt server at ``server`` (``auto``: the automatic one; ``warn`` hears why it
    could not start), else this process. (Nothing loads, and no server starts, until used.)"""
    if server == "auto":
        return Auto(options, timeout, warn)
    if server and not server.lower().startswith(("http://", "https://")):
        from ..errors import UsageError

        raise UsageError(f"--server {server!r} is not a bt server (BT_SERVER too)", "use http(s)://HOST:PORT or auto")
    if server:
        from ..client import Client

        return Remote(options, Client(server, api_key, timeout))
    return Local(options)
