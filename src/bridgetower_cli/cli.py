"""The ``bt`` command line: one thin function per command (parse, call a task, render). No torch import here."""

from __future__ import annotations

import glob
import itertools
import os
import sys
from pathlib import Path

import typer

from . import __version__
from .catalog import DEFAULT_CONTRASTIVE_MODEL, DEFAULT_MATCHING_MODEL, KNOWN_CHECKPOINTS
from .errors import BtError
from .hub import resolve_checkpoint
from .inputs import IMAGE_SUFFIXES, expand_image_sources, read_texts
from .options import (
    BatchSize,
    CandidatesK,
    Device,
    DtypeOpt,
    FormatOpt,
    ImageArgs,
    IndexFile,
    Inputs,
    Kind,
    Model,
    NoRerank,
    OutputFile,
    QueryImage,
    Quiet,
    Rebuild,
    Revision,
    RerankK,
    RetrieveFormatOpt,
    RetrieveInputs,
    Targets,
    TextOpt,
    TextsFile,
    TopK,
)
from .output import StderrReporter, render, render_stream, stderr_console, write_embeddings
from .records import ModelRecord, Outcome

DEFAULT_FOR = {DEFAULT_MATCHING_MODEL, DEFAULT_CONTRASTIVE_MODEL}

app = typer.Typer(
    name="bt",
    help="BridgeTower vision-language model at the shell prompt: score, fill-mask, embed, retrieve.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"bt {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """BridgeTower vision-language model at the shell prompt."""


def _is_image_source(item: str) -> bool:
    if not item.strip():
        return False
    if item == "-" or "://" in item:
        return True
    path = Path(item).expanduser()
    try:
        return (
            path.exists() or path.suffix.lower() in IMAGE_SUFFIXES or (glob.has_magic(item) and bool(glob.glob(item)))
        )
    except OSError:  # e.g. a long text is no valid file name
        return False


def split_inputs(items: list[str]) -> tuple[list[str], list[str]]:
    """Leading items that name image sources are images; the rest are texts (the first item is always an image)."""
    count = 1
    while count < len(items) and _is_image_source(items[count]):
        count += 1
    return items[:count], items[count:]


class Tally:
    """Iterate over ``items``, counting them."""

    def __init__(self, items):
        self.items = items
        self.count = 0

    def __iter__(self):
        for item in self.items:
            self.count += 1
            yield item


def _runtime(model: str, revision: str | None, device: str, dtype, needs: tuple[str, ...]):
    """Resolve the checkpoint first (fast, no torch), then import torch and load it."""
    path = resolve_checkpoint(model, revision)
    from .loading import load_model
    from .runtime import Runtime

    return Runtime(load_model(path, model, device, dtype.value, needs))


def _finish(outcome, fmt, reporter: StderrReporter) -> None:
    render(outcome.records, fmt.value)
    reporter.summary(outcome.skipped)
    if outcome.skipped:
        raise typer.Exit(3)


@app.command(
    epilog="Examples:\n\n"
    "  bt score samples/cat.jpg 'a cat lying on a couch' 'a rocket launch'\n\n"
    "  bt score samples/ 'a cup of coffee' -k 1 -f json | jq '.[] | {image, probability}'\n\n"
    "  bt score 'photos/*.jpg' --texts-file captions.txt -f csv > scores.csv",
)
def score(
    inputs: Inputs,
    texts_file: TextsFile = None,
    model: Model = DEFAULT_MATCHING_MODEL,
    revision: Revision = None,
    device: Device = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: BatchSize = None,
    top_k: TopK = None,
    fmt: FormatOpt = "auto",
    quiet: Quiet = False,
) -> None:
    """Image-text matching scores (ITM head) for every image x text pair, best first per image."""
    image_specs, text_args = split_inputs(inputs)
    texts = read_texts(text_args, texts_file)
    sources = expand_image_sources(image_specs)
    reporter = StderrReporter(quiet)
    runtime = _runtime(model, revision, device, dtype, needs=("itm",))
    batch_size = batch_size or runtime.default_batch_size
    from . import tasks

    _finish(tasks.score(runtime, sources, texts, batch_size, top_k, reporter), fmt, reporter)


@app.command(
    "fill-mask",
    epilog="Examples:\n\n"
    "  bt fill-mask samples/cat.jpg 'a <mask> lying on a couch'\n\n"
    "  bt fill-mask samples/coffee.jpg 'a cup of <mask> on a <mask>' -k 3 -f json | jq '.[0].sequence'\n\n"
    "  bt fill-mask samples/ 'a photo of a <mask>' --targets cat,rocket,coffee,astronaut",
)
def fill_mask(
    inputs: Inputs,
    texts_file: TextsFile = None,
    targets: Targets = None,
    model: Model = DEFAULT_MATCHING_MODEL,
    revision: Revision = None,
    device: Device = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: BatchSize = None,
    top_k: CandidatesK = 5,
    fmt: FormatOpt = "auto",
    quiet: Quiet = False,
) -> None:
    """Predict the <mask> words of each text, conditioned on each image (MLM head)."""
    image_specs, text_args = split_inputs(inputs)
    texts = read_texts(text_args, texts_file)
    sources = expand_image_sources(image_specs)
    target_words = [w.strip() for w in targets.split(",") if w.strip()] if targets else None
    reporter = StderrReporter(quiet)
    runtime = _runtime(model, revision, device, dtype, needs=("mlm",))
    batch_size = batch_size or runtime.default_batch_size
    from . import tasks

    _finish(tasks.fill_mask(runtime, sources, texts, batch_size, top_k, target_words, reporter), fmt, reporter)


@app.command(
    epilog="Examples:\n\n"
    "  bt embed samples/ -f jsonl > images.jsonl\n\n"
    "  bt embed --text 'a cat' --text 'a dog' -f json | jq '.[].dim'\n\n"
    "  bt embed 'photos/*.jpg' --output photos.npz\n\n"
    "  bt embed samples/cat.jpg --kind cross --text 'a cat on a couch'",
)
def embed(
    images: ImageArgs = None,
    kind: Kind = None,
    text: TextOpt = None,
    texts_file: TextsFile = None,
    output: OutputFile = None,
    model: Model = DEFAULT_CONTRASTIVE_MODEL,
    revision: Revision = None,
    device: Device = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: BatchSize = None,
    fmt: FormatOpt = "auto",
    quiet: Quiet = False,
) -> None:
    """L2-normalised ITC embeddings of images, texts, or (image, text) pairs (--kind cross).

    Image and text embeddings come from the unimodal towers alone; cross embeddings need both an image and a text."""
    texts = read_texts(text or [], texts_file) if (text or texts_file) else []
    sources = expand_image_sources(images) if images else []
    kinds = [kind.value] if kind else [k for k, given in (("image", sources), ("text", texts)) if given]
    if not kinds:
        raise BtError("nothing to embed", "pass image sources, or texts with --text / --texts-file")
    if "cross" in kinds and not (sources and texts):
        raise BtError("--kind cross needs images and texts", "pass image sources and --text / --texts-file")
    if "image" in kinds and not sources or "text" in kinds and not texts:
        raise BtError(f"--kind {kinds[0]} needs {kinds[0]}s", "pass them, or choose another --kind")
    if output is not None and output.suffix not in (".npy", ".npz"):
        raise BtError(f"cannot write {output}: unknown format", "use a file name ending in .npy or .npz")
    reporter = StderrReporter(quiet)
    runtime = _runtime(model, revision, device, dtype, needs=("itc",))
    batch_size = batch_size or runtime.default_batch_size
    from . import tasks

    outcome = Outcome()
    records = Tally(
        itertools.chain.from_iterable(
            tasks.embed(runtime, k, sources, texts, batch_size, outcome, reporter) for k in kinds
        )
    )
    if output is None:
        render_stream(records, fmt.value)
    else:
        summary = write_embeddings(records, output, runtime.loaded.name)
        render([summary], fmt.value)
    if not records.count:
        raise BtError("none of the images could be read", "see the warnings above")
    reporter.summary(outcome.skipped)
    if outcome.skipped:
        raise typer.Exit(3)


def _open_index(runtime, index_file, rebuild: bool):
    from .hub import fingerprint
    from .index import EmbeddingIndex, default_index_path

    loaded = runtime.loaded
    dim = loaded.model.config.contrastive_hidden_size
    return EmbeddingIndex(index_file or default_index_path(), fingerprint(loaded.path), dim, rebuild, loaded.name)


def _indexable(specs: list[str]):
    sources = expand_image_sources(specs)
    urls = [s.name for s in sources if s.is_url]
    if urls:
        raise BtError(f"URLs cannot be indexed: {urls[0]}", "download the images and pass the folder")
    return sources, [Path(spec).expanduser() for spec in specs if Path(spec).expanduser().is_dir()]


@app.command(
    epilog="Examples:\n\n"
    "  bt retrieve 'two cats on a couch' ~/Pictures\n\n"
    "  bt retrieve 'a rocket launch' samples/ -k 3 -f paths | xargs open\n\n"
    "  bt retrieve --image samples/cat.jpg --texts-file captions.txt -k 5\n\n"
    "Text queries search an index of ITC image embeddings (built and refreshed as needed: new and changed files "
    "are embedded, deleted ones dropped), then the ITM head reranks the best --rerank-k hits.",
)
def retrieve(
    inputs: RetrieveInputs = None,
    image: QueryImage = None,
    text: TextOpt = None,
    texts_file: TextsFile = None,
    index_file: IndexFile = None,
    rebuild: Rebuild = False,
    top_k: TopK = 10,
    rerank_k: RerankK = 5,
    no_rerank: NoRerank = False,
    model: Model = DEFAULT_CONTRASTIVE_MODEL,
    revision: Revision = None,
    device: Device = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: BatchSize = None,
    fmt: RetrieveFormatOpt = "auto",
    quiet: Quiet = False,
) -> None:
    """Rank images for a text over a persistent index, or texts for an image (--image): ITC shortlist, ITM rerank."""
    inputs = inputs or []
    rerank_k = 0 if no_rerank else rerank_k
    reporter = StderrReporter(quiet)
    if image is not None:
        texts = read_texts([*inputs, *(text or [])], texts_file)
        sources = expand_image_sources([image])
        if len(sources) != 1:
            raise BtError(f"--image takes one image; {image} holds {len(sources)}", "name a single image file")
        (source,) = sources
        runtime = _runtime(model, revision, device, dtype, needs=("itm",))
        batch_size = batch_size or runtime.default_batch_size
        from . import tasks

        outcome = tasks.retrieve_texts(runtime, source, texts, top_k, rerank_k, batch_size, reporter)
    else:
        if len(inputs) < 2:
            raise BtError("retrieve needs a query text and image sources", "e.g. bt retrieve 'a cat' ~/Pictures")
        query = read_texts(inputs[:1], None)[0]
        sources, folders = _indexable(inputs[1:])
        runtime = _runtime(model, revision, device, dtype, needs=("itm",))
        batch_size = batch_size or runtime.default_batch_size
        from . import tasks

        index, refreshed = None, Outcome()
        if "itc" in runtime.loaded.heads:
            index = _open_index(runtime, index_file, rebuild)
            stats = tasks.refresh_index(runtime, index, sources, folders, batch_size, refreshed, reporter)
            reporter.info(stats.line())
        outcome = tasks.retrieve_images(runtime, index, query, sources, top_k, rerank_k, batch_size, reporter)
        outcome.skipped = refreshed.skipped + outcome.skipped
    _finish(outcome, fmt, reporter)


@app.command(
    "index",
    epilog="Examples:\n\n  bt index ~/Pictures\n\n  bt index photos/ --index photos.sqlite --rebuild",
)
def index_command(
    images: Inputs,
    index_file: IndexFile = None,
    rebuild: Rebuild = False,
    model: Model = DEFAULT_CONTRASTIVE_MODEL,
    revision: Revision = None,
    device: Device = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: BatchSize = None,
    fmt: FormatOpt = "auto",
    quiet: Quiet = False,
) -> None:
    """Build or refresh the retrieval index for image folders without querying it."""
    sources, folders = _indexable(images)
    reporter = StderrReporter(quiet)
    runtime = _runtime(model, revision, device, dtype, needs=("itc",))
    batch_size = batch_size or runtime.default_batch_size
    from . import tasks

    index = _open_index(runtime, index_file, rebuild)
    outcome = Outcome()
    stats = tasks.refresh_index(runtime, index, sources, folders, batch_size, outcome, reporter)
    outcome.records = [stats]
    reporter.info(f"{stats.line()}; {index.count()} images in {index.path}")
    _finish(outcome, fmt, reporter)


@app.command(epilog="Examples:\n\n  bt models\n\n  bt models -f json | jq -r '.[] | select(.cached) | .id'")
def models(fmt: FormatOpt = "auto") -> None:
    """The public BridgeTower checkpoints: their heads, image size, and whether they are in the local cache."""
    from .hub import cached_snapshot

    records = [
        ModelRecord(c.id, list(c.heads), c.image_size, cached_snapshot(c.id) is not None, c.id in DEFAULT_FOR)
        for c in KNOWN_CHECKPOINTS
    ]
    render(records, fmt.value)


def _report(error: BtError) -> None:
    message = error.message if len(error.message) <= 300 else error.message[:300] + "…"
    message = f"bt: error: {message}"
    if error.hint:
        message += f" (hint: {error.hint})"
    stderr_console().print(message, markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """The entry point and the one error boundary: usage errors exit 2 (Typer), bt's errors 1, partial work 3;
    never a traceback unless BT_DEBUG=1."""
    try:
        app(args=argv, prog_name="bt")
    except BtError as error:
        if os.environ.get("BT_DEBUG") == "1":
            raise
        _report(error)
        sys.exit(error.exit_code)
    except Exception as error:  # anything unexpected is still one line
        if os.environ.get("BT_DEBUG") == "1":
            raise
        _report(BtError(f"unexpected {type(error).__name__}: {error}", "run again with BT_DEBUG=1 for the traceback"))
        sys.exit(1)
