"""Options shared by the commands, each declared once as an ``Annotated`` alias."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class Format(str, Enum):
    auto = "auto"
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class RetrieveFormat(str, Enum):
    auto = "auto"
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    paths = "paths"


class EmbeddingKind(str, Enum):
    image = "image"
    text = "text"
    cross = "cross"


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
Revision = Annotated[
    Optional[str],
    typer.Option(
        "--revision",
        envvar="BT_REVISION",
        help="Hub revision of --model: a branch, tag, commit or refs/pr/N. Default: main.",
        metavar="REV",
        show_default=False,
    ),
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
        help="Weights and compute dtype; auto = float32 (exact). bfloat16 is faster on GPUs.",
        case_sensitive=False,
    ),
]
BatchSize = Annotated[
    Optional[int],
    typer.Option(
        "--batch-size", "-b", min=1, help="Texts, images or pairs per forward pass. Default: 8 on CPU, 16 on a GPU."
    ),
]
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
ImageArgs = Annotated[
    Optional[list[str]],
    typer.Argument(
        help="Image sources: files, directories, quoted globs, http(s) URLs, '-' = paths on stdin.",
        show_default=False,
        metavar="[IMAGE]...",
    ),
]
TextOpt = Annotated[Optional[list[str]], typer.Option("--text", "-t", help="A text (repeat for several).")]
Kind = Annotated[
    Optional[EmbeddingKind],
    typer.Option("--kind", help="image, text or cross; default: whatever was given (images and/or texts)."),
]
OutputFile = Annotated[
    Optional[Path],
    typer.Option("--output", "-o", help="Write a float32 matrix to FILE.npy, or FILE.npz with ids and model name."),
]
Targets = Annotated[
    Optional[str],
    typer.Option("--targets", help="Comma-separated words: restrict the candidates to these.", metavar="W1,W2"),
]
CandidatesK = Annotated[int, typer.Option("--top-k", "-k", min=1, help="Candidates per mask.")]
RetrieveInputs = Annotated[
    Optional[list[str]],
    typer.Argument(
        help="The query text, then image sources (files, directories, quoted globs, '-' = paths on stdin). "
        "With --image: the texts to rank.",
        show_default=False,
        metavar="QUERY [IMAGE]...",
    ),
]
QueryImage = Annotated[
    Optional[str], typer.Option("--image", "-i", help="Rank texts for this image instead.", metavar="IMAGE")
]
IndexFile = Annotated[
    Optional[Path],
    typer.Option(
        "--index",
        envvar="BT_INDEX",
        help="The embedding index (SQLite). Default: $XDG_CACHE_HOME/bt/index.sqlite (~/.cache/bt/index.sqlite).",
        show_default=False,
        metavar="FILE",
    ),
]
Rebuild = Annotated[bool, typer.Option("--rebuild", help="Start the index afresh (after another model, or damage).")]
RerankK = Annotated[
    int, typer.Option("--rerank-k", "-r", min=0, help="How many of the best ITC hits the ITM head rescores.")
]
NoRerank = Annotated[bool, typer.Option("--no-rerank", help="Rank by ITC similarity alone (fastest).")]
RetrieveFormatOpt = Annotated[
    RetrieveFormat,
    typer.Option(
        "--format", "-f", help="As elsewhere, plus paths: one image path (or text) per line.", case_sensitive=False
    ),
]
