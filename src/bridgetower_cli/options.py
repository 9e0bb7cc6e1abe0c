"""Options shared by the commands, each declared once as an ``Annotated`` alias."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer


class Format(str, Enum):
    auto = "auto"
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class Dtype(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


Inputs = Annotated[
    list[str],
    typer.Argument(
        help="Image sources (files, directories, quoted globs, http(s) URLs, '-' = paths on stdin), then texts.",
        show_default=False,
        metavar="IMAGE... TEXT...",
    ),
]
Model = Annotated[
    str,
    typer.Option("--model", "-m", envvar="BT_MODEL", help="Hub id or local checkpoint directory."),
]
Device = Annotated[
    str,
    typer.Option(
        "--device", "-d", envvar="BT_DEVICE", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."
    ),
]
DtypeOpt = Annotated[
    Dtype,
    typer.Option(
        "--dtype",
        envvar="BT_DTYPE",
        help="Weights and compute dtype; auto = float32, bfloat16 on CUDA.",
        case_sensitive=False,
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Texts, images or pairs per forward pass.")]
TopK = Annotated[Optional[int], typer.Option("--top-k", "-k", min=1, help="Keep the best k results.")]
TextsFile = Annotated[
    Optional[str],
    typer.Option("--texts-file", "-T", help="Read texts from a file, one per line ('-' = stdin).", metavar="FILE"),
]
FormatOpt = Annotated[
    Format,
    typer.Option("--format", "-f", help="auto = table on a terminal, JSON in a pipe or file.", case_sensitive=False),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or warnings (errors still show).")]
