"""Operations: each capability declared once, by its request type (``requests``: checks itself when made, states
its cost) in the one table (``table``: heads, task, record, command, formats, route). Names load on first use, so
that the command line's help can read the table without importing the request types."""

from __future__ import annotations

import importlib

_REQUESTS = ("CheckIndex", "Classify", "Cost", "Embed", "Evaluate", "EvaluateClassification", "Explain", "FillMask",
             "RankTexts", "Refresh", "Score", "Search")  # fmt: skip
_TABLE = ("FORMATS", "DEFAULT_MODELS", "OPERATIONS", "Operation", "operation_of", "run")
__all__ = [*_REQUESTS, *_TABLE]


def __getattr__(name: str):
    if name in _REQUESTS:
        return getattr(importlib.import_module(".requests", __name__), name)
    if name in _TABLE:
        importlib.import_module(".requests", __name__)  # (every request type declared in the table)
        return getattr(importlib.import_module(".table", __name__), name)
    raise AttributeError(name)
