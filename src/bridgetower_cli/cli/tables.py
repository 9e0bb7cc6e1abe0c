"""Records as rich tables on a terminal, fitted to its width: on a narrow one the decorative columns go first,
headers shorten and texts wrap between words; a table that still does not fit is printed a record per block, a field
per line, so that no number, id or path is ever cut."""

from __future__ import annotations

from dataclasses import asdict
from itertools import groupby

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..records import EmbeddingRecord, ExplainRecord, FillMaskRecord, RetrievalRecord, ScoreRecord

WIDE = 80  # columns from which the bars and full headers show


def _bar(probability: float, width: int = 20) -> Text:
    filled = round(probability * width)
    return Text("█" * filled + "·" * (width - filled), style="green")


class _Layout:
    """How tables look: full (boxes, bars, full headers), or narrow (short headers, no bars, tight padding)."""

    def __init__(self, wide: bool):
        self.wide = wide

    def table(self, **options) -> Table:
        if self.wide:
            return Table(**options)
        return Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True, **options)

    def name(self, table: Table, header: str) -> None:
        """A column of names, paths or texts: wraps between words, never the one that keeps a number from showing."""
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
    """Any flat records: one column per field (None fields left out, as in JSON), numbers to 4 decimals."""
    table = layout.table()
    first = asdict(records[0])
    columns = [k for k, v in first.items() if v is not None]
    for column in columns:
        number = isinstance(first[column], (int, float)) and not isinstance(first[column], bool)
        (layout.number if number else layout.name)(table, column)
    for record in records:
        table.add_row(*(_cell(getattr(record, c)) for c in columns))
    yield table


def _cell(value) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return f"{value:.4f}" if isinstance(value, float) else str(value)


TABLES = {
    ScoreRecord: score_tables,
    FillMaskRecord: fill_mask_tables,
    EmbeddingRecord: embedding_tables,
    RetrievalRecord: retrieval_tables,
    ExplainRecord: explain_tables,
}


def print_tables(records: list, console: Console) -> None:
    """The full tables where they fit, else the narrow ones, else blocks (a field per line)."""
    width = console.size.width
    tables = TABLES.get(type(records[0]), record_tables)
    for layout in (_Layout(wide=True), _Layout(wide=False)) if width >= WIDE else (_Layout(wide=False),):
        drawn = list(tables(records, layout))
        if all(_fitted(table, console, width) for table in drawn):
            for table in drawn:
                console.print(table)
            return
    for table in tables(records, _Layout(wide=True)):
        _print_blocks(table, console)


def _fitted(table: Table, console: Console, width: int) -> bool:
    """Fix the columns' widths so that the table fits ``width`` with no word cut (a wrapping column at least its
    longest word, a no-wrap one whole; the room left shared by what each still wants), or say it cannot fit.
    rich itself narrows the widest wrapping column first, cutting an id when another column could have wrapped."""
    wanted, least = [], []
    for column in table.columns:
        cells = [str(column.header)] + [cell.plain if isinstance(cell, Text) else str(cell) for cell in column.cells]
        longest = max(max(map(cell_len, cell.splitlines() or [""])) for cell in cells)
        wanted.append(max(longest, column.min_width or 0))
        words = (word for cell in cells for word in cell.split())
        least.append(wanted[-1] if column.no_wrap else max([column.min_width or 0, *map(cell_len, words)]))
    unbounded = console.options.update_width(10**6)
    frame = console.measure(table, options=unbounded).maximum - sum(wanted)  # borders and padding
    room = width - frame - sum(least)
    if room < 0:
        return False
    slack = sum(wanted) - sum(least)
    for column, most, fewest in zip(table.columns, wanted, least):
        column.width = most if room >= slack else fewest + (most - fewest) * room // max(slack, 1)
    return True


def _print_blocks(table: Table, console: Console) -> None:
    """A table too wide for the terminal even with its texts wrapped: each row as a block of ``header: value``
    lines, long ones left for the terminal to wrap (soft wrap), so a copied line is whole."""
    if table.title:
        console.print(Text(str(table.title), style="bold"), soft_wrap=True)
    headers = [str(column.header) for column in table.columns]
    for row in zip(*(column.cells for column in table.columns)):
        console.print(soft_wrap=True)
        for header, cell in zip(headers, row):
            if isinstance(cell, str) and cell:  # bars (Text) and a group's repeated name ("") are left out
                console.print(Text(f"{header}: ", style="bold") + Text(cell), soft_wrap=True)


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
