"""Rendering: records to stdout as table / json / jsonl / csv / paths; messages and progress to stderr."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..errors import BtError, PartialSuccess, StdoutClosed
from ..records import (
    EmbeddingRecord,
    EmbeddingsWritten,
    Outcome,
    Reporter,
)
from .console import console, stderr_console  # noqa: F401  (the one console factory)
from .options import Format  # noqa: F401  (the formats, declared with the options)

if TYPE_CHECKING:
    from rich.console import Console

STREAMED = ("jsonl", "csv", "paths")  # formats written record by record, as the work goes on


def resolve_format(fmt: str, stream: TextIO | None = None) -> str:
    """``auto`` is a table on a terminal and JSON in a pipe or file."""
    if fmt != "auto":
        return fmt
    stream = stream or sys.stdout
    return "table" if stream.isatty() else "json"


def _plain(record) -> dict:
    """A record as its JSON object (``Record.to_dict``); fields that do not apply (None) are left out."""
    return record.to_dict() if hasattr(record, "to_dict") else {k: v for k, v in dict(record).items() if v is not None}


def write_json(records: Iterable, stream: TextIO) -> None:
    stream.write(json.dumps([_plain(r) for r in records], indent=2, ensure_ascii=False) + "\n")


def write_jsonl(records: Iterable, stream: TextIO) -> None:
    for record in records:
        stream.write(json.dumps(_plain(record), ensure_ascii=False) + "\n")
        stream.flush()


def write_csv(records: Iterable, stream: TextIO) -> None:
    """One header (every field of the record type) and a row per record; lists as JSON, missing values empty."""
    writer = None
    for record in records:
        row = {
            k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
            for k, v in asdict(record).items()
        }
        if writer is None:
            writer = csv.DictWriter(stream, fieldnames=list(row), lineterminator="\n")
            writer.writeheader()
        writer.writerow(row)
        stream.flush()


def write_paths(records: Iterable, stream: TextIO, separator: str = "\n") -> None:
    """One image path (or text) per record; ``separator`` NUL for ``xargs -0``."""
    for record in records:
        stream.write(f"{record.image if record.image is not None else record.text}{separator}")
        stream.flush()


@contextlib.contextmanager
def _writing():
    """A closed stdout (a pipe whose reader has gone) ends the run as StdoutClosed; a failed write (a full disk) as
    one line naming the reason."""
    try:
        yield
    except BrokenPipeError:
        raise StdoutClosed() from None
    except OSError as error:  # a full disk, a quota, an I/O error on the file stdout is
        reason = (error.strerror or str(error)).lower()
        raise BtError(f"cannot write the output: {reason}", "free some space, or write the output elsewhere") from None


def render(records: Iterable, fmt: str, stream: TextIO | None = None, separator: str = "\n", title: str = "") -> int:
    """Write records to ``stream`` (stdout) in ``fmt``: jsonl, csv and paths record by record as they arrive, a table,
    JSON or an HTML page (``title`` its heading) once all are in. Returns how many records were written."""
    with _writing():
        return _render(records, fmt, stream or sys.stdout, separator, title)


def _render(records: Iterable, fmt: str, stream: TextIO, separator: str, title: str = "") -> int:
    fmt = resolve_format(fmt, stream)
    counted = _Counted(records)
    if fmt == "jsonl":
        write_jsonl(counted, stream)
    elif fmt == "csv":
        write_csv(counted, stream)
    elif fmt == "paths":
        write_paths(counted, stream, separator)
    else:
        collected = list(counted)
        if fmt == "json":
            write_json(collected, stream)
        elif fmt == "html":
            from .page import write_html

            write_html(collected, stream, title)
        elif collected:
            from .tables import print_tables

            print_tables(collected, console(stream))
    stream.flush()
    return counted.count


def render_object(record, fmt: str, stream: TextIO | None = None) -> None:
    """One record (a summary, a report) as a JSON object, a line of JSONL, CSV, or a two-column table."""
    stream = stream or sys.stdout
    fmt = resolve_format(fmt, stream)
    with _writing():
        _render_object(record, fmt, stream)


def _render_object(record, fmt: str, stream: TextIO) -> None:
    if fmt == "json":  # one object: every field, null where it does not apply
        stream.write(json.dumps(asdict(record), indent=2, ensure_ascii=False) + "\n")
    elif fmt == "table":
        from .tables import object_table

        console(stream).print(object_table(record))
    else:
        _render([record], fmt, stream, "\n")
    stream.flush()


class _Counted:
    def __init__(self, items: Iterable):
        self.items = items
        self.count = 0

    def __iter__(self):
        for item in self.items:
            self.count += 1
            yield item


def write_embeddings(records: Iterable[EmbeddingRecord], path: Path, model: str) -> EmbeddingsWritten:
    """Write the embeddings as a float32 matrix: ``.npy``, or ``.npz`` with ``embeddings``, ``ids``, ``kinds`` and
    ``model``. Written to a temporary file and renamed, so an interrupted run leaves no partial file."""
    import numpy as np

    rows, ids, kinds = [], [], []
    for record in records:
        rows.append(np.asarray(record.embedding, dtype=np.float32))
        ids.append(" | ".join(part for part in (record.image, record.text) if part is not None))
        kinds.append(record.kind)
    if not rows:
        raise BtError("no embeddings to write", "see the warnings above")
    matrix = np.stack(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        if path.suffix == ".npz":
            np.savez(partial, embeddings=matrix, ids=np.array(ids), kinds=np.array(kinds), model=np.array(model))
        else:
            np.save(partial, matrix)
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise BtError(
            f"cannot write {path}: {error.strerror or error}", "check the directory and its permissions"
        ) from None
    return EmbeddingsWritten(str(path), matrix.shape[0], matrix.shape[1], model)


class StderrReporter(Reporter):
    """Warnings, skips, status and progress on one stderr console, so a warning never lands inside a progress bar
    and no stale bar stays behind. Progress and status only on a terminal; ``quiet`` keeps only skips and errors.
    A warning of a repeating ``kind`` is shown ``SHOWN`` times, then counted and summarised at the end."""

    SHOWN = 3

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.quiet = quiet
        self._console = console
        self.repeats: Counter[str] = Counter()

    @property
    def console(self) -> Console:
        """The stderr console, made when something is first shown (a call that shows nothing imports no rich)."""
        if self._console is None:
            self._console = stderr_console()
        return self._console

    def _print(self, label: str, message: str) -> None:
        from rich.text import Text

        self.console.print(Text.assemble((label, "yellow"), message), soft_wrap=True)

    def warn(self, message: str, kind: str | None = None) -> None:
        if self.quiet:
            return
        if kind is not None:
            self.repeats[kind] += 1
            if self.repeats[kind] > self.SHOWN:
                return
        self._print("warning: ", message)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def skipped(self, name: str, reason: str) -> None:
        self._print("skipped: ", f"{name}: {reason}")

    @property
    def _live(self) -> bool:
        return not self.quiet and self.console.is_terminal

    @contextlib.contextmanager
    def progress(self, total: int, description: str):
        if total < 2 or not self._live:
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)

    @contextlib.contextmanager
    def status(self, message: str):
        if not self._live:
            yield
            return
        with self.console.status(message):
            yield

    def finish(self, outcome: Outcome) -> None:
        """Summarise repeated warnings; with skipped inputs, raise PartialSuccess (exit status 3)."""
        for kind, count in self.repeats.items():
            if count > self.SHOWN and not self.quiet:
                self._print("warning: ", f"{count - self.SHOWN} more {kind} (not shown)")
        if outcome.skipped:
            raise PartialSuccess(
                f"{len(outcome.skipped)} input(s) skipped (each named above); the records of the others are complete"
            )
