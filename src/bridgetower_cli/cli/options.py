"""Options shared by the commands, each declared once as an ``Annotated`` alias. Every option with a value names
its metavar, so help shows ``N`` or ``FILE``, never a type placeholder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

from .params import Argument, Option


class Format(str, Enum):
    """How records are written to stdout."""

    auto = "auto"
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    paths = "paths"
    html = "html"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


class Dtype(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"
    int8 = "int8"


SOURCES = "files, directories (walked), quoted globs, http(s) URLs, '-' = paths on stdin"

ImagesAndTexts = Annotated[
    list[str],
    Argument(
        help=f"Images ({SOURCES}) and texts, in any order. An argument that names an existing image or directory is "
        "an image; one that looks like a path but names nothing is an error; anything else is a text.",
        show_default=False,
        metavar="IMAGE|TEXT...",
    ),
]
IndexImages = Annotated[
    list[str] | None,
    Argument(help="Local images: files, directories (walked), quoted globs, '-' = paths on stdin.", metavar="IMAGE..."),
]
Model = Annotated[
    str,
    Option("--model", "-m", envvar="BT_MODEL", help="Hub id or local checkpoint directory.", metavar="ID|DIR"),
]
Revision = Annotated[
    str | None,
    Option(
        "--revision",
        envvar="BT_REVISION",
        help="Hub revision of --model: a branch, tag, commit or refs/pr/N. Default: main.",
        metavar="REV",
        show_default=False,
    ),
]


def _device(value: str) -> str:
    """A device name bt knows, in the words every way in uses (``model.catalog.check_device``)."""
    from ..model.catalog import check_device

    return check_device(value)


Device = Annotated[
    str,
    Option(
        "--device",
        "-d",
        envvar="BT_DEVICE",
        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.",
        metavar="DEVICE",
        callback=_device,
    ),
]
DtypeOpt = Annotated[
    Dtype,
    Option(
        "--dtype",
        envvar="BT_DTYPE",
        help=(
            "Weights and compute dtype; auto = float32 (exact). bfloat16 is faster on GPUs; int8 (CPUs, the int8 extra)"
            " about twice as fast on CPUs. bfloat16, float16 and int8 are approximate."
        ),
        case_sensitive=False,
        metavar="auto|float32|bfloat16|float16|int8",
    ),
]
Threads = Annotated[
    int | None,
    Option(
        "--threads",
        envvar="BT_THREADS",
        help="CPU threads for the model. Default: PyTorch's (one per core).",
        metavar="N",
        show_default=False,
    ),
]
FastDecode = Annotated[
    bool,
    Option(
        "--fast-decode",
        envvar="BT_FAST_DECODE",
        help=(
            "Read JPEGs much larger than the model's input at a reduced scale (2-8x less decoding; the pixels"
            " differ slightly from a full decode, and so do the numbers). Off by default."
        ),
    ),
]
BatchSize = Annotated[
    int | None,
    Option(
        "--batch-size",
        "-b",
        help="Texts, images or pairs per forward pass. Default: 8 on a CPU, 16 on a GPU.",
        metavar="N",
    ),
]
TextsFile = Annotated[
    str | None,
    Option("--texts-file", "-T", help="Read texts from a file, one per line ('-' = stdin).", metavar="FILE"),
]
FORMATS = "auto = a table on a terminal, JSON in a pipe or file; jsonl and csv stream record by record"
FormatOpt = Annotated[
    Format,
    Option("--format", "-f", help=f"{FORMATS}.", case_sensitive=False, metavar="auto|table|json|jsonl|csv"),
]
FORMAT_HELP = {"paths": "paths = one image path (or text) per line", "html": "html = one page with thumbnails"}


def format_option(command: str):
    """A model command's --format, its choices and help from the operations table (``operations.table.FORMATS``):
    the one place a command's output formats are decided."""
    from ..operations.table import FORMATS as WRITTEN

    formats = WRITTEN[command]
    extra = "".join(f"; {FORMAT_HELP[name]}" for name in formats if name in FORMAT_HELP)
    metavar = "|".join(("auto", *formats))
    return Annotated[Format, Option("--format", "-f", help=f"{FORMATS}{extra}.", case_sensitive=False, metavar=metavar)]


Print0 = Annotated[
    bool,
    Option("--print0", "-0", help="With -f paths: end each path with NUL, for xargs -0."),
]
NULL_HELP = "With -: the paths on standard input are NUL-separated (find -print0, as xargs -0)."
Null = Annotated[bool, Option("--null", "-0", help=NULL_HELP)]
NullLong = Annotated[bool, Option("--null", help=NULL_HELP + " (-0 is --print0 here.)")]
Quiet = Annotated[
    bool,
    Option("--quiet", "-q", help="No progress, status or warnings (skips and errors still show)."),
]
ImageArgs = Annotated[
    list[str] | None,
    Argument(help=f"Images: {SOURCES}.", show_default=False, metavar="[IMAGE]..."),
]
TextOpt = Annotated[list[str] | None, Option("--text", "-t", help="A text (repeat for several).", metavar="TEXT")]
Kind = Annotated[
    str | None,
    Option(
        "--kind",
        help="Default: whatever was given (images and/or texts); cross = (image, text) pairs.",
        metavar="image|text|cross",
        autocompletion=lambda: ["image", "text", "cross"],
        show_default=False,
    ),
]
OutputFile = Annotated[
    Path | None,
    Option(
        "--output",
        "-o",
        help="Write a float32 matrix to FILE.npy, or FILE.npz with ids and model name; stdout gets a summary.",
        metavar="FILE",
    ),
]
Targets = Annotated[
    str | None,
    Option("--targets", help="Comma-separated words: restrict the candidates to these.", metavar="W1,W2"),
]
ScoreTopK = Annotated[
    int | None,
    Option("--top-k", "-k", help="Keep the best k texts per image. Default: all.", metavar="K"),
]
CandidatesK = Annotated[int, Option("--top-k", "-k", help="Candidates per mask.", metavar="K")]
HitsK = Annotated[int, Option("--top-k", "-k", help="How many hits.", metavar="K")]
RetrieveInputs = Annotated[
    list[str] | None,
    Argument(
        help=f"The query text (or --query), then the images to search ({SOURCES}); none with -n: the whole "
        "index. With --image: the texts to rank.",
        show_default=False,
        metavar="QUERY [IMAGE]...",
    ),
]
QueryText = Annotated[
    str | None,
    Option(
        "--query",
        "-Q",
        help="The query text, whatever it looks like (AC/DC, v1.0/beta): every argument is then an image source.",
        metavar="TEXT",
    ),
]
QueryImage = Annotated[str | None, Option("--image", "-i", help="Rank texts for this image instead.", metavar="IMAGE")]
IndexFile = Annotated[
    Path | None,
    Option(
        "--index",
        envvar="BT_INDEX",
        help="The embedding index (SQLite). Default: $XDG_CACHE_HOME/bt/index.sqlite (~/.cache/bt/index.sqlite).",
        show_default=False,
        metavar="FILE",
    ),
]
Rebuild = Annotated[bool, Option("--rebuild", help="Start the index afresh (after another model, or damage).")]
RerankK = Annotated[
    int | None,
    Option(
        "--rerank-k",
        "-r",
        help="How many of the best ITC hits the ITM head rescores. Default: 5.",
        metavar="K",
        show_default=False,
    ),
]
NoRerank = Annotated[bool, Option("--no-rerank", help="Rank by ITC similarity alone (fastest).")]
Annotations = Annotated[
    Path,
    Argument(
        help="Captions: the Karpathy split format (dataset_flickr30k.json, dataset_coco.json) or the LAVIS test "
        'format ([{"image": ..., "caption": [...]}]).',
        metavar="ANNOTATIONS",
        show_default=False,
    ),
]
ImagesRoot = Annotated[
    Path | None,
    Option(
        "--images",
        help="The folder the annotations' image paths start from. Default: the annotation file's folder.",
        metavar="DIR",
        show_default=False,
    ),
]
Split = Annotated[str, Option("--split", help="Karpathy split to evaluate.", metavar="SPLIT")]
KTest = Annotated[
    int,
    Option(
        "--k-test",
        help="ITM rescores each image's and each caption's k most similar (paper: 128 for Flickr30K, 256 for COCO).",
        metavar="K",
    ),
]
ItcOnly = Annotated[bool, Option("--itc-only", help="Rank by ITC similarity alone (no ITM).")]
Layer = Annotated[
    int | None,
    Option(
        "--layer",
        help="Fusion layer whose cross-attention is explained. Default: the middle one (num_hidden_layers // 2 - 1).",
        metavar="L",
        show_default=False,
    ),
]
Words = Annotated[bool, Option("--words", help="Add one panel per word (token) to each picture.")]
PictureFile = Annotated[
    Path | None,
    Option("--output", "-o", help="Write the picture of one (image, text) pair here.", metavar="FILE.png"),
]
PictureDir = Annotated[
    Path | None,
    Option("--output-dir", help="Write one picture per (image, text) pair here, named after both.", metavar="DIR"),
]
Server = Annotated[
    str | None,
    Option(
        "--server",
        envvar="BT_SERVER",
        help="Run on a bt server (bt serve) at this URL instead of in this process; auto: on your own background "
        "server, started on first use (exits after BT_KEEP_ALIVE idle, default 10m).",
        metavar="URL|auto",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    Option(
        "--api-key",
        envvar="BT_API_KEY",
        help="The server's API key (on the command line other users can see it: prefer BT_API_KEY or --api-key-file).",
        metavar="KEY",
        show_default=False,
    ),
]
ApiKeyFile = Annotated[
    Path | None,
    Option(
        "--api-key-file",
        envvar="BT_API_KEY_FILE",
        help="A file (mode 600) whose first line is the server's API key.",
        metavar="FILE",
        show_default=False,
    ),
]
LikeImage = Annotated[
    str | None,
    Option("--like", help="Rank the images by their likeness to this image (ITC image-image).", metavar="IMAGE"),
]
NoRefresh = Annotated[
    bool,
    Option("--no-refresh", "-n", help="Query the index as it is: no walk, no stat, no embedding of new files."),
]
ExactSearch = Annotated[
    bool, Option("--exact", help="Search every row exactly, past a large index's approximate tier.")
]
TierFrom = Annotated[
    int | None,
    Option(
        "--tier-from",
        metavar="ROWS",
        help="Keep an approximate search tier from this many rows on (default 200000; 0: never). Kept in the index.",
    ),
]
StatsFlag = Annotated[bool, Option("--stats", help="Report the index: images, model, size on disk, last refresh.")]
PruneFlag = Annotated[bool, Option("--prune", help="Drop the rows of files that no longer exist, anywhere.")]
CheckFlag = Annotated[
    bool,
    Option("--check", help="Verify the whole index (every row against its checksum); exit 1 on damage."),
]
RepairFlag = Annotated[
    bool,
    Option("--repair", help="Embed again exactly the rows whose vectors are missing or damaged (needs the model)."),
]
Wait = Annotated[
    float,
    Option(
        "--wait",
        help="Seconds to wait for another bt process writing the index before reporting it busy.",
        metavar="SECONDS",
    ),
]
ClientTimeout = Annotated[
    float | None,
    Option(
        "--timeout",
        envvar="BT_TIMEOUT",
        min=0.1,
        help="With --server: seconds to wait for the work to move (a record, a skip, a progress step). Default: 660.",
        metavar="SECONDS",
        show_default=False,
    ),
]
EngineOpt = Annotated[
    Engine,
    Option(
        "--engine",
        envvar="BT_ENGINE",
        help="local: this process; ray: Ray Data (CPU tasks decode, model actors embed; pip install "
        '"bridgetower-cli\\[ray]").',
        case_sensitive=False,
        metavar="local|ray",
    ),
]
RayAddress = Annotated[
    str | None,
    Option(
        "--ray-address",
        help="The Ray cluster to join (auto: the running one). Default: $RAY_ADDRESS, else a local Ray.",
        metavar="ADDRESS",
        show_default=False,
    ),
]
