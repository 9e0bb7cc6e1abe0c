"""Records as rich tables on a terminal, fitted to its width: on a narrow one the decorative columns go first and
headers shorten, long names and paths wrap, and a number is never cut."""

from __future__ import annotations

from dataclasses import asdict
from itertools import groupby

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..records import EmbeddingRecord, ExplainRecord, FillMaskRecord, RetrievalRecord, ScoreRecord

WIDE = 80  # columns from which the bars and full headers show


def _bar(probability: float, width: int = 20) -> Text:
    filled = round(probability * width)
    return Text("█" * filled + "·" * (width - filled), style="green")


class _Layout:
    """How tables look at a width: full, or narrow (short headers, no bars, tight padding)."""

    def __init__(self, width: int):
        self.wide = width >= WIDE

    def table(self, **options) -> Table:
        if self.wide:
            return Table(**options)
        return Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True, **options)

    def name(self, table: Table, header: str) -> None:
        """A column of names, paths or texts: wraps, never the one that keeps a number from showing."""
        table.add_column(header, overflow="fold", ratio=1)

    def number(self, table: Table, header: str, short: str | None = None) -> None:
        header = header if self.wide or short is None else short
        table.add_column(header, justify="right", no_wrap=True, min_width=max(len(header), 6))

    def bar(self, table: Table) -> bool:
        if self.wide:
            table.add_column("", no_wrap=True)
        return self.wide


def score_tables(records: list, layout: _Layout):
    """One table: titled by the image when there is one, else with an image column (and a rule between images
    when they have several rows)."""
    groups = [(image, list(group)) for image, group in groupby(records, key=lambda r: r.image)]
    single = len(groups) == 1
    table = layout.table(title=groups[0][0] if single else None, title_justify="left", title_style="bold")
    if not single:
        layout.name(table, "image")
    layout.name(table, "text")
    layout.number(table, "logit")
    layout.number(table, "probability", "prob.")
    bars = layout.bar(table)
    ruled = any(len(group) > 1 for _, group in groups)
    for image, group in groups:
        for rank, record in enumerate(group):
            cells = [record.text, f"{record.logit:.4f}", f"{record.probability:.4f}"]
            cells += [_bar(record.probability)] if bars else []
            table.add_row(*([] if single else [image if rank == 0 else ""]), *cells)
        if ruled:
            table.add_section()
    yield table


def fill_mask_tables(records: list, layout: _Layout):
    for record in records:
        table = layout.table(title=f"{record.image}: {record.sequence}", title_justify="left", title_style="bold")
        layout.number(table, "mask")
        layout.name(table, "token")
        layout.number(table, "probability", "prob.")
        bars = layout.bar(table)
        for number, candidates in enumerate(record.masks, start=1):
            for rank, candidate in enumerate(candidates):
                label = str(number) if rank == 0 else ""
                shown = candidate.token_str or "␣"  # a whitespace token
                cells = [label, shown, f"{candidate.score:.4f}"] + ([_bar(candidate.score)] if bars else [])
                table.add_row(*cells)
            table.add_section()
        yield table


def embedding_tables(records: list, layout: _Layout):
    table = layout.table()
    for column in ("image", "text", "kind"):
        layout.name(table, column)
    layout.number(table, "dim")
    layout.name(table, "embedding")
    for record in records:
        head = ", ".join(f"{v:+.4f}" for v in record.embedding[: 4 if layout.wide else 2])
        table.add_row(record.image or "", record.text or "", record.kind, str(record.dim), f"[{head}, …]")
    yield table


def retrieval_tables(records: list, layout: _Layout):
    table = layout.table()
    subject = "image" if records[0].image is not None else "text"
    layout.number(table, "rank", "#")
    layout.name(table, subject)
    layout.number(table, "similarity", "sim.")
    layout.number(table, "logit")
    layout.number(table, "probability", "prob.")
    for r in records:
        cells = [r.similarity, r.logit, r.probability]
        table.add_row(str(r.rank), getattr(r, subject), *("" if v is None else f"{v:.4f}" for v in cells))
    yield table


def explain_tables(records: list, layout: _Layout):
    table = layout.table()
    layout.name(table, "image")
    layout.name(table, "text")
    layout.number(table, "layer")
    layout.number(table, "probability", "prob.")
    layout.name(table, "picture")
    for r in records:
        table.add_row(r.image, r.text, str(r.layer), f"{r.probability:.4f}", r.picture or "")
    yield table


def record_tables(records: list, layout: _Layout):
    """Any flat records: one column per field (None fields left out, as in JSON)."""
    table = layout.table()
    columns = [k for k, v in asdict(records[0]).items() if v is not None]
    for column in columns:
        layout.name(table, column)
    for record in records:
        values = (getattr(record, c) for c in columns)
        table.add_row(*(", ".join(map(str, v)) if isinstance(v, list) else str(v) for v in values))
    yield table


TABLES = {
    ScoreRecord: score_tables,
    FillMaskRecord: fill_mask_tables,
    EmbeddingRecord: embedding_tables,
    RetrievalRecord: retrieval_tables,
    ExplainRecord: explain_tables,
}


def print_tables(records: list, console: Console) -> None:
    layout = _Layout(console.size.width)
    for table in TABLES.get(type(records[0]), record_tables)(records, layout):
        console.print(table)


def object_table(record) -> Table:
    """One record as a two-column table: a field per row (a mapping: a row per key, indented), floats to two
    decimals (percentages, seconds)."""
    table = Table(show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in asdict(record).items():
        if isinstance(value, dict):
            table.add_row(key, "")
            for name, item in value.items():
                table.add_row(f"  {name}", _shown(item), style="not bold")
            continue
        table.add_row(key, _shown(value))
    return table


def _shown(value) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return f"{value:.2f}" if isinstance(value, float) else str(value)
