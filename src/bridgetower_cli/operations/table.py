"""The one table of operations. Each request type in ``requests`` declares its entry with ``@operation``: its name,
the heads it needs and prefers, the task it calls (``"module:function"`` under ``tasks``, imported when it runs so
that the table stays free of torch, or a function), its record type, the command that shows it (whose output
formats are listed here) and its server route.

``Local`` runs an operation in process, the server's routes are made from this table and run it through the same
``run``, ``Remote`` sends the request type; the command line takes its formats and default models from here."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..model.catalog import DEFAULT_CONTRASTIVE_MODEL, DEFAULT_MATCHING_MODEL

Heads = tuple[tuple[str, ...], tuple[str, ...]]

# The output formats of each command (and ``auto``: a table on a terminal, JSON in a pipe or file).
FORMATS = {
    "score": ("table", "json", "jsonl", "csv", "html"),
    "fill-mask": ("table", "json", "jsonl", "csv"),
    "embed": ("table", "json", "jsonl", "csv"),
    "retrieve": ("table", "json", "jsonl", "csv", "paths", "html"),
    "index": ("table", "json", "jsonl", "csv"),
    "eval": ("table", "json", "jsonl", "csv"),
    "classify": ("table", "json", "jsonl", "csv", "html"),
    "explain": ("table", "json", "jsonl", "csv"),
}
DEFAULT_MODELS = {
    "score": DEFAULT_MATCHING_MODEL,
    "fill-mask": DEFAULT_MATCHING_MODEL,
    "explain": DEFAULT_MATCHING_MODEL,
    "embed": DEFAULT_CONTRASTIVE_MODEL,
    "retrieve": DEFAULT_CONTRASTIVE_MODEL,
    "index": DEFAULT_CONTRASTIVE_MODEL,
    "eval": DEFAULT_CONTRASTIVE_MODEL,
    "classify": DEFAULT_CONTRASTIVE_MODEL,
}


@dataclass(frozen=True)
class Operation:
    """One capability. Its task, ``task(runtime, request, outcome, reporter, batch_size)``, returns the records (an
    iterable, made as it goes) or, when ``single``, one record."""

    name: str
    request: type
    record: type
    command: str
    route: str
    heads: Callable[[Any], Heads]
    task: str | Callable
    single: bool = False
    uses_model: Callable[[Any], bool] = lambda q: True  # (False: the task runs with no runtime, nothing loads)

    @property
    def formats(self) -> tuple[str, ...]:
        return FORMATS.get(self.command, ("table", "json", "jsonl", "csv"))

    @property
    def default_model(self) -> str:
        return DEFAULT_MODELS.get(self.command, DEFAULT_CONTRASTIVE_MODEL)

    def run(self, runtime, request, outcome, reporter, batch_size: int):
        task = self.task
        if isinstance(task, str):
            module, _, function = task.partition(":")
            task = getattr(importlib.import_module(f"bridgetower_cli.tasks.{module}"), function)
        return task(runtime, request, outcome, reporter, batch_size)


OPERATIONS: dict[type, Operation] = {}


def operation(name: str, record: type, command: str, route: str, heads: Callable[[Any], Heads],
              task: str | Callable, single: bool = False,
              uses_model: Callable[[Any], bool] = lambda q: True) -> Callable[[type], type]:  # fmt: skip
    """Declare a request type's operation (a class decorator)."""

    def declare(request: type) -> type:
        OPERATIONS[request] = Operation(name, request, record, command, route, heads, task, single, uses_model)
        return request

    return declare


def operation_of(request) -> Operation:
    """The operation a request asks for."""
    return OPERATIONS[type(request)]


def run(runtime, request, outcome, reporter, batch_size: int):
    """Run a request's task on a loaded runtime (in process, or on a server's request thread)."""
    return operation_of(request).run(runtime, request, outcome, reporter, batch_size)
