"""Durations as people write them (``30s``, ``5m``, ``1h``, plain seconds): one parser for every option and
environment variable that takes one."""

from __future__ import annotations

import math

from .errors import UsageError


def parse_duration(text: str) -> float:
    """``30s``, ``5m``, ``1h`` or plain seconds, as ollama's keep_alive."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except ValueError:
        raise UsageError(f"not a duration: {text!r}", "e.g. 30s, 5m, 1h") from None
    if not value >= 0 or math.isinf(value):
        raise UsageError(f"not a duration: {text!r}", "e.g. 30s, 5m, 1h")
    return value
