"""Rendering: records to stdout as table / json / jsonl / csv; messages and progress to stderr."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, is_dataclass
from itertools import groupby
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .records import Reporter, ScoreRecord

FORMATS = ("auto", "table", "json", "jsonl", "csv")


def stderr_console() -> Console:
    return Console(stderr=True, no_color="NO_COLOR" in os.environ, highlight=False)


def resolve_format(fmt: str, stream: TextIO | None = None) -> str:
    """``auto`` is a table on a terminal and JSON in a pipe or file."""
    if fmt != "auto":
        return fmt
    stream = stream or sys.stdout
    return "table" if stream.isatty() else "json"


def _plain(record) -> dict:
    return asdict(record) if is_dataclass(record) else dict(record)


def write_json(records: Iterable, stream: TextIO) -> None:
    stream.write(json.dumps([_plain(r) for r in records], indent=2, ensure_ascii=False) + "\n")


def write_jsonl(records: Iterable, stream: TextIO) -> None:
    for record in records:
        stream.write(json.dumps(_plain(record), ensure_ascii=False) + "\n")
        stream.flush()


def write_csv(records: Iterable, stream: TextIO) -> None:
    writer = None
    for record in records:
        row = {
            k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
            for k, v in _plain(record).items()
        }
        if writer is None:
            writer = csv.DictWriter(stream, fieldnames=list(row), lineterminator="\n")
            writer.writeheader()
        writer.writerow(row)


def _bar(probability: float, width: int = 20) -> Text:
    filled = round(probability * width)
    return Text("█" * filled + "·" * (width - filled), style="green")


def score_tables(records: list) -> Iterator[Table]:
    for image, group in groupby(records, key=lambda r: r.image):
        table = Table(title=image, title_justify="left", title_style="bold")
        table.add_column("text")
        table.add_column("logit", justify="right")
        table.add_column("probability", justify="right")
        table.add_column("")
        for record in group:
            table.add_row(record.text, f"{record.logit:.4f}", f"{record.probability:.4f}", _bar(record.probability))
        yield table


TABLES = {ScoreRecord: score_tables}


def render(records: list, fmt: str, stream: TextIO | None = None) -> None:
    """Write records to ``stream`` (stdout) in ``fmt``."""
    stream = stream or sys.stdout
    fmt = resolve_format(fmt, stream)
    if fmt == "json":
        write_json(records, stream)
    elif fmt == "jsonl":
        write_jsonl(records, stream)
    elif fmt == "csv":
        write_csv(records, stream)
    elif records:
        console = Console(file=stream, no_color="NO_COLOR" in os.environ, highlight=False)
        for table in TABLES[type(records[0])](records):
            console.print(table)
    stream.flush()


class StderrReporter(Reporter):
    """Reports warnings, skips and progress on stderr (progress only on a terminal, never with --quiet)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.console = stderr_console()

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[yellow]warning:[/yellow] {message}", markup=True, soft_wrap=True)

    def skipped(self, name: str, reason: str) -> None:
        self.console.print(f"[yellow]skipped:[/yellow] {reason}", markup=True, soft_wrap=True)

    @contextlib.contextmanager
    def progress(self, total: int, description: str):
        from tqdm import tqdm

        disable = self.quiet or not sys.stderr.isatty() or total < 2
        with tqdm(total=total, desc=description, file=sys.stderr, disable=disable, leave=False) as bar:
            yield bar.update

    def summary(self, skipped: list) -> None:
        if skipped:
            self.console.print(f"[yellow]{len(skipped)} input(s) skipped:[/yellow]", markup=True)
            for item in skipped:
                self.console.print(f"  {item.name}: {item.reason}", markup=False, soft_wrap=True)
