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
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import BtError
from .records import EmbeddingRecord, EmbeddingsWritten, FillMaskRecord, Reporter, RetrievalRecord, ScoreRecord


def stderr_console() -> Console:
    return Console(stderr=True, no_color="NO_COLOR" in os.environ, highlight=False)


def resolve_format(fmt: str, stream: TextIO | None = None) -> str:
    """``auto`` is a table on a terminal and JSON in a pipe or file."""
    if fmt != "auto":
        return fmt
    stream = stream or sys.stdout
    return "table" if stream.isatty() else "json"


def _plain(record) -> dict:
    """A record as a dict; fields that do not apply (None) are left out."""
    return {k: v for k, v in (asdict(record) if is_dataclass(record) else dict(record)).items() if v is not None}


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


def fill_mask_tables(records: list) -> Iterator[Table]:
    for record in records:
        table = Table(title=f"{record.image}: {record.sequence}", title_justify="left", title_style="bold")
        table.add_column("mask", justify="right")
        table.add_column("token")
        table.add_column("probability", justify="right")
        table.add_column("")
        for number, candidates in enumerate(record.masks, start=1):
            for rank, candidate in enumerate(candidates):
                label = str(number) if rank == 0 else ""
                shown = candidate.token_str or "␣"  # a whitespace token
                table.add_row(label, shown, f"{candidate.score:.4f}", _bar(candidate.score))
            table.add_section()
        yield table


def embedding_tables(records: list) -> Iterator[Table]:
    table = Table()
    for column in ("image", "text", "kind", "dim", "embedding"):
        table.add_column(column)
    for record in records:
        head = ", ".join(f"{v:+.4f}" for v in record.embedding[:4])
        table.add_row(record.image or "", record.text or "", record.kind, str(record.dim), f"[{head}, …]")
    yield table


def record_tables(records: list) -> Iterator[Table]:
    """Any flat records: one column per field."""
    table = Table()
    columns = list(_plain(records[0]))
    for column in columns:
        table.add_column(column, overflow="fold")
    for record in records:
        values = (getattr(record, c) for c in columns)
        table.add_row(*(", ".join(map(str, v)) if isinstance(v, list) else str(v) for v in values))
    yield table


def retrieval_tables(records: list) -> Iterator[Table]:
    table = Table()
    subject = "image" if records[0].image is not None else "text"
    for column in ("rank", subject, "similarity", "logit", "probability"):
        table.add_column(column, justify="left" if column == subject else "right")
    for r in records:
        cells = [r.similarity, r.logit, r.probability]
        table.add_row(str(r.rank), getattr(r, subject), *("" if v is None else f"{v:.4f}" for v in cells))
    yield table


TABLES = {
    ScoreRecord: score_tables,
    FillMaskRecord: fill_mask_tables,
    EmbeddingRecord: embedding_tables,
    RetrievalRecord: retrieval_tables,
}


def render(records: list, fmt: str, stream: TextIO | None = None) -> None:
    """Write records to ``stream`` (stdout) in ``fmt``."""
    stream = stream or sys.stdout
    fmt = resolve_format(fmt, stream)
    if fmt == "json":
        write_json(records, stream)
    elif fmt == "paths":
        for record in records:
            stream.write(f"{record.image if record.image is not None else record.text}\n")
    elif fmt == "jsonl":
        write_jsonl(records, stream)
    elif fmt == "csv":
        write_csv(records, stream)
    elif records:
        console = Console(file=stream, no_color="NO_COLOR" in os.environ, highlight=False)
        for table in TABLES.get(type(records[0]), record_tables)(records):
            console.print(table)
    stream.flush()


def render_stream(records: Iterable, fmt: str, stream: TextIO | None = None) -> None:
    """Like ``render``, but jsonl and csv write each record as it arrives (flat memory on long runs)."""
    stream = stream or sys.stdout
    fmt = resolve_format(fmt, stream)
    if fmt == "jsonl":
        write_jsonl(records, stream)
    elif fmt == "csv":
        write_csv(records, stream)
    else:
        render(list(records), fmt, stream)


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
    """Reports warnings, skips and progress on stderr (progress only on a terminal, never with --quiet)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.console = stderr_console()

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"[yellow]warning:[/yellow] {message}", markup=True, soft_wrap=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False, soft_wrap=True)

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
