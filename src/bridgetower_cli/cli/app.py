"""The ``bt`` command line: one thin function per command (parse, call a task, render). No torch import here."""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import typer
from typer import Abort
from typer.core import TyperArgument, TyperOption

try:  # the click that Typer runs on: its own vendored copy in recent versions
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older Typer
    from click.exceptions import ClickException, UsageError

from .. import __version__
from ..errors import BtError, PartialSuccess, StdoutClosed
from ..model.catalog import DEFAULT_CONTRASTIVE_MODEL, DEFAULT_MATCHING_MODEL, KNOWN_CHECKPOINTS, retrieval_heads
from ..model.hub import resolve_checkpoint
from ..records import ModelRecord, Outcome
from ..sources import ImageSource, expand_image_sources, read_texts, split_arguments
from .options import (
    Annotations,
    ApiKey,
    BatchSize,
    CandidatesK,
    CheckFlag,
    ClientTimeout,
    Device,
    Dtype,
    DtypeOpt,
    Engine,
    EngineOpt,
    FormatOpt,
    HitsK,
    ImageArgs,
    ImagesAndTexts,
    ImagesRoot,
    IndexFile,
    IndexImages,
    ItcOnly,
    Kind,
    KTest,
    Layer,
    LikeImage,
    Model,
    NoRefresh,
    NoRerank,
    OutputFile,
    PictureDir,
    PictureFile,
    Print0,
    PruneFlag,
    QueryImage,
    Quiet,
    RayAddress,
    Rebuild,
    RepairFlag,
    RerankK,
    RetrieveFormatOpt,
    RetrieveInputs,
    Revision,
    ScoreFormatOpt,
    ScoreTopK,
    Server,
    Split,
    StatsFlag,
    Targets,
    TextOpt,
    TextsFile,
    Threads,
    Wait,
    Words,
)
from .render import STREAMED, Format, StderrReporter, render, render_object, resolve_format, stderr_console

DEFAULT_FOR = {DEFAULT_MATCHING_MODEL, DEFAULT_CONTRASTIVE_MODEL}
SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")
# Help shows each option's metavar (N, FILE, ...) and nothing for flags and arguments, never Typer's type
# placeholders (<bool>, <str>, <list[str]>).
_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else _option_type(self, ctx)
TyperArgument.display_type_rich = lambda self, ctx: None

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


@dataclass
class ModelOptions:
    """The options every model command takes, and the one way they become a loaded runtime."""

    model: str
    revision: str | None
    device: str
    dtype: Dtype
    threads: int | None
    batch_size: int | None

    def load(self, reporter: StderrReporter, needs: tuple[str, ...], preferred: tuple[str, ...] = ()):
        """Resolve the checkpoint first (fast, no torch), then import torch and load it; (runtime, batch size)."""
        path = resolve_checkpoint(self.model, self.revision)
        with reporter.status(f"loading {self.model} ..."):
            from ..model.loading import load_model
            from ..model.runtime import Runtime

            loaded = load_model(path, self.model, self.device, self.dtype.value, needs, preferred, self.threads)
            runtime = Runtime(loaded)
        # The millions of objects torch and transformers made will live as long as the process: out of the
        # collector's sight, so walking a 100,000-file folder does not pay for scanning them again and again.
        gc.freeze()
        return runtime, self.batch_size or runtime.default_batch_size


def _emit(
    records: Iterable,
    fmt: Format,
    outcome: Outcome,
    reporter: StderrReporter,
    separator: str = "\n",
    title: str = "",
) -> None:
    """Render the records (streamed formats as they come), then report: none readable is an error, some skipped
    a partial success (exit 3)."""
    if resolve_format(fmt.value) not in STREAMED:
        records = list(records)
        if not records and outcome.skipped:
            raise BtError("none of the images could be read", "see the warnings above")
    if render(records, fmt.value, separator=separator, title=title) == 0 and outcome.skipped:
        raise BtError("none of the images could be read", "see the warnings above")
    reporter.finish(outcome)


def _images_and_texts(
    arguments: list[str], text: list[str] | None, texts_file: str | None
) -> tuple[list[ImageSource], list[str]]:
    """Images and texts from arguments in any order, -t/--text and --texts-file."""
    image_specs, text_arguments = split_arguments(arguments)
    if "-" in image_specs and texts_file == "-":
        raise BtError(
            "standard input cannot hold both image paths and texts",
            "pass the texts with --texts-file FILE, or the images as arguments",
        )
    texts = read_texts([*text_arguments, *(text or [])], texts_file)
    return expand_image_sources(image_specs), texts


def _only_images(specs: list[str], what: str) -> list[str]:
    images, texts = split_arguments(specs)
    if texts:
        raise BtError(f"{texts[0]!r} is not an image {what}", "pass texts with -t TEXT (or --texts-file FILE)")
    return images


@app.command(
    epilog="Examples:\n\n"
    "  bt score samples/cat.jpg 'a cat lying on a couch' 'a rocket launch'\n\n"
    "  bt score samples/ 'a cup of coffee' -k 1 -f json | jq '.[] | {image, probability}'\n\n"
    "  bt score 'photos/*.jpg' --texts-file captions.txt -f csv > scores.csv\n\n"
    "Default model: BridgeTower/bridgetower-base-itm-mlm.",
)
def score(
    inputs: ImagesAndTexts,
    text: TextOpt = None,
    texts_file: TextsFile = None,
    model: Model = DEFAULT_MATCHING_MODEL,
    revision: Revision = None,
    device: Device = "auto",
    dtype: DtypeOpt = Dtype.auto,
    threads: Threads = None,
    batch_size: BatchSize = None,
    top_k: ScoreTopK = None,
    fmt: ScoreFormatOpt = Format.auto,
    quiet: Quiet = False,
    server: Server = None,
    api_key: ApiKey = None,
    timeout: ClientTimeout = None,
) -> None:
    """Image-text matching (ITM head) for every image x text pair; per image, the best match probability first."""
    sources, texts = _images_and_texts(inputs, text, texts_file)
    reporter = StderrReporter(quiet)
    title = f"bt score: {len(sources)} image(s) x {len(texts)} text(s)"
    if server:
        from .. import client

        outcome = Outcome()
        records = client.score(client.Client(server, api_key, timeout), model, sources, texts, top_k, outcome, reporter)
        return _emit(records, fmt, outcome, reporter, title=title)
    runtime, batch_size = ModelOptions(model, revision, device, dtype, threads, batch_size).load(reporter, ("itm",))
    from ..tasks import pairs

    outcome = Outcome()
    records = pairs.score(runtime, sources, texts, outcome, batch_size, top_k, reporter)
    _emit(records, fmt, outcome, reporter, title=title)


@app.command(
    "fill-mask",
    epilog="Examples:\n\n"
    "  bt fill-mask samples/cat.jpg 'a <mask> lying on a couch'\n\n"
    "  bt fill-mask samples/coffee.jpg 'a cup of <mask> on a <mask>' -k 3 -f json | jq '.[0].sequence'\n\n"
    "  bt fill-mask samples/ 'a photo of a <mask>' --targets cat,rocket,coffee,astronaut\n\n"
    "Default model: BridgeTower/bridgetower-base-itm-mlm.",
)
def fill_mask(
    inputs: ImagesAndTexts,
    text: TextOpt = None,
    texts_file: TextsFile = None,
    targets: Targets = None,
    model: Model = DEFAULT_MATCHING_MODEL,
    revision: Revision = None,
    device: Device = "auto",
    dtype: DtypeOpt = Dtype.auto,
    threads: Threads = None,
    batch_size: BatchSize = None,
    top_k: CandidatesK = 5,
    fmt: FormatOpt = Format.auto,
    quiet: Quiet = False,
    server: Server = None,
    api_key: ApiKey = None,
    timeout: ClientTimeout = None,
) -> None:
    """Predict the <mask> words of each text, conditioned on each image (MLM head)."""
    sources, texts = _images_and_texts(inputs, text, texts_file)
    target_words = [w.strip() for w in targets.split(",") if w.strip()] if targets else None
    reporter = StderrReporter(quiet)
    if server:
        from .. import client

        outcome = Outcome()
        remote = client.Client(server, api_key, timeout)
        records = client.fill_mask(remote, model, sources, texts, top_k, target_words, outcome, reporter)
        return _emit(records, fmt, outcome, reporter)
    runtime, batch_size = ModelOptions(model, revision, device, dtype, threads, batch_size).load(reporter, ("mlm",))
    from ..tasks import pairs

    outcome = Outcome()
    records = pairs.fill_mask(runtime, sources, texts, outcome, batch_size, top_k, target_words, reporter)
    _emit(records, fmt, outcome, reporter)


@app.command(
    epilog="Examples:\n\n"
    "  bt embed samples/ -f jsonl > images.jsonl\n\n"
    "  bt embed --text 'a cat' --text 'a dog' -f json | jq '.[].dim'\n\n"
    "  bt embed 'photos/*.jpg' --output photos.npz\n\n"
    "  bt embed samples/cat.jpg --kind cross --text 'a cat on a couch'\n\n"
    "Default model: BridgeTower/bridgetower-large-itm-mlm-itc.",
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
    dtype: DtypeOpt = Dtype.auto,
    threads: Threads = None,
    batch_size: BatchSize = None,
    fmt: FormatOpt = Format.auto,
    quiet: Quiet = False,
    server: Server = None,
    api_key: ApiKey = None,
    timeout: ClientTimeout = None,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddress = None,
) -> None:
    """L2-normalised ITC embeddings of images, texts, or (image, text) pairs (--kind cross).

    Image and text embeddings come from the unimodal towers alone; cross embeddings need both an image and a text."""
    specs = _only_images(images or [], "(embed texts with -t)")
    if "-" in specs and texts_file == "-":
        raise BtError("standard input cannot hold both image paths and texts", "pass the texts with --texts-file FILE")
    texts = read_texts(text or [], texts_file) if (text or texts_file) else []
    sources = expand_image_sources(specs) if specs else []
    kinds = [kind.value] if kind else [k for k, given in (("image", sources), ("text", texts)) if given]
    if not kinds:
        raise BtError("nothing to embed", "pass image sources, or texts with --text / --texts-file")
    if "cross" in kinds and not (sources and texts):
        raise BtError("--kind cross needs images and texts", "pass image sources and --text / --texts-file")
    if "image" in kinds and not sources or "text" in kinds and not texts:
        raise BtError(f"--kind {kinds[0]} needs {kinds[0]}s", "pass them, or choose another --kind")
    reporter = StderrReporter(quiet)
    outcome = Outcome()
    if engine is Engine.ray:
        return _embed_on_ray(
            model, revision, device, dtype, batch_size, ray_address, kinds, sources, output, fmt, outcome, reporter
        )
    if output is not None and output.suffix not in (".npy", ".npz"):
        raise BtError(f"cannot write {output}: unknown format", "use a file name ending in .npy or .npz")
    if server:
        from .. import client

        remote = client.Client(server, api_key, timeout)
        records = (r for k in kinds for r in client.embed(remote, model, k, sources, texts, outcome, reporter))
    else:
        options = ModelOptions(model, revision, device, dtype, threads, batch_size)
        runtime, batch_size = options.load(reporter, ("itc",))
        from ..tasks import pairs

        records = (r for k in kinds for r in pairs.embed(runtime, k, outcome, sources, texts, batch_size, reporter))
    if output is None:
        _emit(records, fmt, outcome, reporter)
        return
    from .render import write_embeddings

    render_object(write_embeddings(records, output, model), fmt.value)
    reporter.finish(outcome)


def _embed_on_ray(model, revision, device, dtype, batch_size, address, kinds, sources, output, fmt, outcome, reporter):
    """`bt embed --engine ray`: image embeddings on Ray; with --output DIR, Parquet shards (resumable)."""
    from ..engines.ray import SHARD, RayEngine, shard_paths, write_shard
    from ..records import EmbeddingRecord

    if kinds != ["image"]:
        raise BtError("--engine ray embeds images", "embed texts and pairs with --engine local")
    if any(s.is_url for s in sources):
        raise BtError("--engine ray reads local files (or a shared file system), not URLs", "download them first")
    engine = RayEngine.for_checkpoint(resolve_checkpoint(model, revision), model, device, dtype.value, address)
    batch_size = batch_size or 8
    shards = shard_paths(output, len(sources)) if output is not None else []
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    todo = [s for k, s in enumerate(sources) if output is None or not shards[k // SHARD].exists()]
    if output is not None and len(todo) < len(sources):
        reporter.info(f"{len(sources) - len(todo)} images already in complete shards of {output}: resuming")
    position = {s.path: k for k, s in enumerate(sources)}
    pending: dict[int, list] = {}
    remaining = {}
    for s in todo:
        remaining[position[s.path] // SHARD] = remaining.get(position[s.path] // SHARD, 0) + 1

    def records():
        with reporter.progress(len(todo), "embedding images") as advance:
            for batch in engine.embed(todo, batch_size):
                for item in batch:
                    if item.error:
                        outcome.skip(item.name, item.error, reporter)
                    else:
                        vector = item.embedding.tolist()
                        yield EmbeddingRecord(item.name, None, "image", model, len(vector), vector)
                    shard = position[item.path] // SHARD
                    if output is not None:
                        if not item.error:
                            pending.setdefault(shard, []).append((position[item.path], item))
                        remaining[shard] -= 1
                        if remaining[shard] == 0:
                            rows = sorted(pending.pop(shard, []), key=lambda row: row[0])
                            write_shard(shards[shard], [(i.name, "image", model, i.embedding) for _, i in rows])
                advance(len(batch))

    if output is None:
        return _emit(records(), fmt, outcome, reporter)
    written = sum(1 for _ in records())
    from ..records import EmbeddingsWritten

    render_object(EmbeddingsWritten(str(output), written, engine.dim, model), fmt.value)
    reporter.finish(outcome)


def server_index_name(index_file: Path | None) -> str | None:
    """With --server, --index names one of the server's own indexes: a plain name, never a path."""
    if index_file is None:
        return None
    if len(index_file.parts) != 1 or index_file.suffix == ".sqlite":
        raise BtError(
            f"with --server, --index names one of the server's indexes, not a file ({index_file})",
            "pass a plain name, e.g. --index photos",
        )
    return str(index_file)


def _indexable(specs: list[str]) -> tuple[list[ImageSource], list[Path]]:
    sources = expand_image_sources(specs)
    urls = [s.name for s in sources if s.is_url]
    if urls:
        raise BtError(f"URLs cannot be indexed: {urls[0]}", "download the images and pass the folder")
    return sources, [Path(spec).expanduser() for spec in specs if Path(spec).expanduser().is_dir()]


@app.command(
    epilog="Examples:\n\n"
    "  bt retrieve 'two cats on a couch' ~/Pictures\n\n"
    "  bt retrieve 'a rocket launch' samples/ -k 3 -f paths -0 | xargs -0 ls -l\n\n"
    "  bt retrieve --image samples/cat.jpg --texts-file captions.txt -k 5\n\n"
    "Text queries search an index of ITC image embeddings (built and refreshed as needed: new and changed files "
    "are embedded, deleted ones dropped), then the ITM head reranks the best --rerank-k hits, best match "
    "probability first. Default model: BridgeTower/bridgetower-large-itm-mlm-itc.",
)
def retrieve(
    inputs: RetrieveInputs = None,
    image: QueryImage = None,
    text: TextOpt = None,
    texts_file: TextsFile = None,
    like: LikeImage = None,
    index_file: IndexFile = None,
    rebuild: Rebuild = False,
    no_refresh: NoRefresh = False,
    wait: Wait = 60.0,
    top_k: HitsK = 10,
    rerank_k: RerankK = 5,
    no_rerank: NoRerank = False,
    model: Model = DEFAULT_CONTRASTIVE_MODEL,
    revision: Revision = None,
    device: Device = "auto",
    dtype: DtypeOpt = Dtype.auto,
    threads: Threads = None,
    batch_size: BatchSize = None,
    fmt: RetrieveFormatOpt = Format.auto,
    print0: Print0 = False,
    quiet: Quiet = False,
    server: Server = None,
    api_key: ApiKey = None,
    timeout: ClientTimeout = None,
) -> None:
    """Rank images for a text (ITC shortlist over a persistent index, ITM rerank) or like an image; or texts for an
    image (--image)."""
    inputs = inputs or []
    rerank_k = 0 if no_rerank else rerank_k
    separator = "\0" if print0 else "\n"
    title = ""
    options = ModelOptions(model, revision, device, dtype, threads, batch_size)
    reporter = StderrReporter(quiet)
    outcome = Outcome()
    if image is not None:
        images, _ = split_arguments(inputs)
        if images:
            raise BtError(f"with --image the arguments are texts to rank; {images[0]} is an image", "pass texts")
        texts = read_texts([*inputs, *(text or [])], texts_file)
        sources = expand_image_sources([image])
        if len(sources) != 1:
            raise BtError(f"--image takes one image; {image} holds {len(sources)}", "name a single image file")
        title = f"texts for {image}"
        if server:
            from .. import client

            payload = {"texts": texts, "top_k": top_k, "rerank_k": rerank_k}
            remote = client.Client(server, api_key, timeout)
            records = client.retrieve(remote, model, payload, outcome, reporter, image=sources[0])
            return _emit(records, fmt, outcome, reporter, separator, title)
        runtime, batch_size = options.load(reporter, *retrieval_heads(rerank_k))
        from ..tasks import retrieve as retrieval

        records = retrieval.retrieve_texts(runtime, sources[0], texts, top_k, rerank_k, batch_size, reporter)
    else:
        if text or texts_file:
            raise BtError(
                "--text and --texts-file give the texts to rank for an --image; a text query is the first argument",
                "bt retrieve 'QUERY' DIR..., or bt retrieve --image IMAGE --texts-file FILE",
            )
        if like is None and inputs and split_arguments(inputs[:1])[0]:
            like, inputs = inputs[0], inputs[1:]  # an image file as the query: images like it
        if like is None and len(inputs) < 2 or like is not None and not inputs:
            raise BtError("retrieve needs a query and image sources", "e.g. bt retrieve 'a cat' ~/Pictures")
        if like is not None:
            (query,) = expand_image_sources([like]) if Path(like).is_file() else [None]
            if query is None:
                raise BtError(f"--like takes one image file; {like} is not one", "name a single image file")
            specs = inputs
        else:
            (query,), specs = read_texts(inputs[:1], None), inputs[1:]
        specs = _only_images(specs, "or folder to search")
        title = f"images like {like}" if like is not None else query
        if server:  # the images and the index live with the server, under its --allow-path roots
            from .. import client

            if like is not None:
                raise BtError("--like is not served yet", "run it without --server")
            payload = {
                "query": query,
                "sources": [os.path.abspath(spec) for spec in specs],
                "index": server_index_name(index_file),
                "rebuild": rebuild,
                "refresh": not no_refresh,
                "top_k": top_k,
                "rerank_k": rerank_k,
            }
            records = client.retrieve(client.Client(server, api_key, timeout), model, payload, outcome, reporter)
            return _emit(records, fmt, outcome, reporter, separator, title)
        if no_refresh:  # no walk: the files named, and what the index holds under the folders named
            folders = [Path(spec).expanduser() for spec in specs if Path(spec).expanduser().is_dir()]
            files = [spec for spec in specs if not Path(spec).expanduser().is_dir()]
            sources = expand_image_sources(files) if files else []
        else:
            sources, folders = _indexable(specs)
        needs = ("itc",) if like is not None else retrieval_heads(rerank_k)[0]
        runtime, batch_size = options.load(reporter, needs, retrieval_heads(rerank_k)[1])
        from ..tasks import retrieve as retrieval

        records = retrieval.retrieve_images(
            runtime,
            query,
            sources,
            outcome,
            folders,
            index_file,
            rebuild,
            top_k,
            rerank_k,
            batch_size,
            reporter,
            refresh=not no_refresh,
            wait_s=wait,
        )
    _emit(records, fmt, outcome, reporter, separator, title)


@app.command(
    "index",
    epilog="Examples:\n\n  bt index ~/Pictures\n\n  bt index photos/ --index photos.sqlite --rebuild\n\n"
    "  bt index --check && bt index --stats -f json\n\n"
    "Default model: BridgeTower/bridgetower-large-itm-mlm-itc.",
)
def index_command(
    images: IndexImages = None,
    index_file: IndexFile = None,
    rebuild: Rebuild = False,
    stats: StatsFlag = False,
    prune: PruneFlag = False,
    check: CheckFlag = False,
    repair: RepairFlag = False,
    wait: Wait = 60.0,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddress = None,
    model: Model = DEFAULT_CONTRASTIVE_MODEL,
    revision: Revision = None,
    device: Device = "auto",
    dtype: DtypeOpt = Dtype.auto,
    threads: Threads = None,
    batch_size: BatchSize = None,
    fmt: FormatOpt = Format.auto,
    quiet: Quiet = False,
) -> None:
    """Build or refresh the retrieval index of local images without querying it; --stats, --prune, --check,
    --repair."""
    from ..index.files import default_index_path
    from ..index.store import EmbeddingIndex

    path = index_file or default_index_path()
    reporter = StderrReporter(quiet)
    if stats:
        with EmbeddingIndex.for_reading(path, check=False) as index:
            render_object(index.stats(), fmt.value)
            return index.check_quickly()  # the figures first, then whatever damage they hide
    if prune:
        with EmbeddingIndex.for_writing(path, None, None, wait_s=wait) as index:
            reporter.info(f"index: {index.prune()} rows of files that are gone dropped")
            return render_object(index.stats(), fmt.value)
    if check or repair:
        options = ModelOptions(model, revision, device, dtype, threads, batch_size)
        return _check_index(path, repair, wait, options, fmt, reporter)
    if not images:
        raise BtError("bt index needs images or folders to index", "e.g. bt index ~/Pictures (or --stats, --check)")
    sources, folders = _indexable(_only_images(images, "file or folder"))
    runtime, ray = None, None
    if engine is Engine.ray:  # the model runs on Ray's actors; this process only writes the index
        from ..engines.ray import RayEngine
        from ..model.hub import fingerprint

        checkpoint = resolve_checkpoint(model, revision)
        ray = RayEngine.for_checkpoint(checkpoint, model, device, dtype.value, ray_address)
        batch_size = batch_size or 8
        index = EmbeddingIndex.for_writing(path, fingerprint(checkpoint), ray.dim, rebuild, model, wait_s=wait)
    else:
        runtime, batch_size = ModelOptions(model, revision, device, dtype, threads, batch_size).load(reporter, ("itc",))
        from ..tasks import indexing

        index = indexing.open_index(runtime, path, rebuild, wait_s=wait)
    from ..tasks import indexing

    outcome = Outcome()
    with index:
        stats = indexing.refresh_index(runtime, index, sources, outcome, folders, batch_size, reporter, engine=ray)
        reporter.info(f"{stats.line()}; {index.count()} images in {index.path}")
    _emit([stats], fmt, outcome, reporter)


def _check_index(path: Path, repair: bool, wait: float, options: ModelOptions, fmt: Format, reporter) -> None:
    """``--check``: verify every row; ``--repair``: embed again exactly the damaged rows (the model must be the
    index's). Exit 1 while damage remains."""
    from ..index.store import EmbeddingIndex

    opener = (
        (lambda: EmbeddingIndex.for_writing(path, None, None, wait_s=wait, check=False))
        if repair
        else (lambda: EmbeddingIndex.for_reading(path, check=False))
    )
    with opener() as index:
        with reporter.progress(index.count(), "checking the index") as advance:
            report = index.verify(advance)
        if repair and not report.sound:
            report = _repair(index, report, options, reporter)
    render_object(report, fmt.value)
    if not report.sound:
        from ..errors import IndexDamaged

        raise IndexDamaged(
            f"the index {path} is damaged: {report.damaged} rows ({report.vector_file}; catalog {report.catalog})",
            "bt index --repair re-embeds them" if not repair else "rebuild it with --rebuild",
        )


def _repair(index, report, options: ModelOptions, reporter):
    """Forget the damaged rows (a new vector file if its own is missing or foreign), embed their files again."""
    import os

    from ..model.hub import fingerprint
    from ..tasks import indexing

    if report.catalog != "ok":
        return report  # the catalog itself: only --rebuild can mend that
    runtime, batch_size = options.load(reporter, ("itc",))
    if fingerprint(runtime.loaded.path) != index.fingerprint:
        raise BtError(
            f"the index {index.path} was built with {index.label}, not {options.model}",
            f"repair it with -m {index.label}",
        )
    if report.vector_file.startswith("its float16 copy"):
        index.copy_to_half()  # a cache: written again from the vectors, nothing to embed
    index.forget(
        report.damaged_paths,
        new_vector_file=report.vector_file not in ("ok",) and not report.vector_file.startswith("its float16 copy"),
    )
    present = [p for p in report.damaged_paths if os.path.exists(p)]
    outcome = Outcome()
    if present:
        sources = [ImageSource(p, path=p) for p in present]
        stats = indexing.refresh_index(runtime, index, sources, outcome, (), batch_size, reporter)
        reporter.info(
            f"repaired: {stats.line()}; {len(report.damaged_paths) - len(present)} rows of files gone dropped"
        )
    return index.verify()


@app.command(
    epilog="Examples:\n\n"
    "  bt explain samples/cat.jpg 'a cat lying on a couch' -o cat.png\n\n"
    "  bt explain samples/ 'a cup of coffee' 'a rocket' --output-dir maps/ --words\n\n"
    "  bt explain samples/cat.jpg 'a cat' -f json | jq '.[0].tokens[].token'\n\n"
    "The Grad-CAM of the ITM match logit over the cross-attention of one fusion layer (as LAVIS computes it): "
    "brighter where the text's words attend and raise the match. Default model: "
    "BridgeTower/bridgetower-base-itm-mlm.",
)
def explain(
    inputs: ImagesAndTexts,
    text: TextOpt = None,
    texts_file: TextsFile = None,
    layer: Layer = None,
    words: Words = False,
    output: PictureFile = None,
    output_dir: PictureDir = None,
    model: Model = DEFAULT_MATCHING_MODEL,
    revision: Revision = None,
    device: Device = "auto",
    dtype: DtypeOpt = Dtype.auto,
    threads: Threads = None,
    batch_size: BatchSize = None,
    fmt: FormatOpt = Format.auto,
    quiet: Quiet = False,
) -> None:
    """Where in each image the model looks for each text: Grad-CAM heat maps (ITM head), as PNG and as numbers."""
    sources, texts = _images_and_texts(inputs, text, texts_file)
    if output is not None and output_dir is not None:
        raise BtError("--output and --output-dir exclude each other", "--output for one pair, --output-dir for several")
    if output is not None and len(sources) * len(texts) != 1:
        raise BtError(
            f"--output writes one picture; {len(sources)} image(s) x {len(texts)} text(s) make more",
            "use --output-dir DIR",
        )
    reporter = StderrReporter(quiet)
    runtime, batch_size = ModelOptions(model, revision, device, dtype, threads, batch_size).load(reporter, ("itm",))
    from ..tasks.explain import explain as explain_pairs
    from .pictures import overlay, panels, picture_name, save_png

    if output is None and output_dir is None and resolve_format(fmt.value) == "table":
        reporter.info("no pictures written: pass --output FILE.png or --output-dir DIR")

    def records():
        for record, image in explain_pairs(runtime, sources, texts, outcome, layer, batch_size, reporter):
            if output is not None or output_dir is not None:
                caption = f"{record.text} | match {record.probability:.3f} | layer {record.layer}"
                picture = overlay(image, record.grid, runtime.image_size, caption)
                if words:
                    tokens = [overlay(image, token.grid, runtime.image_size, token.token) for token in record.tokens]
                    picture = panels([picture, *tokens])
                path = output if output is not None else output_dir / picture_name(record.image, record.text)
                save_png(picture, path)
                record.picture = str(path)
            yield record

    outcome = Outcome()
    _emit(records(), fmt, outcome, reporter)


from .serve import EPILOG as SERVE_EPILOG  # noqa: E402
from .serve import serve  # noqa: E402

app.command(epilog=SERVE_EPILOG)(serve)


@app.command(
    "eval",
    epilog="Examples:\n\n"
    "  bt eval samples/captions.json\n\n"
    "  bt eval dataset_flickr30k.json --images flickr30k-images --k-test 128 -f json\n\n"
    "  bt eval coco_karpathy_test.json --images coco/ --k-test 256 --itc-only\n\n"
    "The BridgeTower paper's protocol: ITC similarities, the ITM head on each image's and each caption's k-test "
    "most similar, the two merged by maximum; R@1/5/10 in percent. Default model: "
    "BridgeTower/bridgetower-large-itm-mlm-itc.",
)
def eval_command(
    annotations: Annotations,
    images: ImagesRoot = None,
    split: Split = "test",
    k_test: KTest = 128,
    itc_only: ItcOnly = False,
    model: Model = DEFAULT_CONTRASTIVE_MODEL,
    revision: Revision = None,
    device: Device = "auto",
    dtype: DtypeOpt = Dtype.auto,
    threads: Threads = None,
    batch_size: BatchSize = None,
    fmt: FormatOpt = Format.auto,
    quiet: Quiet = False,
) -> None:
    """Image-text retrieval recall (R@1/5/10) of a checkpoint on a caption set, by the BridgeTower protocol."""
    from ..tasks.evaluation import load_caption_set

    caption_set = load_caption_set(annotations, images or annotations.parent, split)
    reporter = StderrReporter(quiet)
    needs = ("itc",) if itc_only else ("itm",)
    runtime, batch_size = ModelOptions(model, revision, device, dtype, threads, batch_size).load(
        reporter, needs, ("itm", "itc")
    )
    from ..tasks.evaluation import evaluate

    outcome = Outcome()
    record = evaluate(runtime, caption_set, outcome, k_test, itc_only, batch_size, reporter)
    render_object(record, fmt.value)
    if outcome.skipped:
        total = len(caption_set.images)
        raise PartialSuccess(
            f"{len(outcome.skipped)} of {total} images could not be read (named above): these recalls cover the "
            f"other {record.images} and their {record.texts} captions, not comparable with figures on the full set"
        )


@app.command(epilog="Examples:\n\n  bt models\n\n  bt models -f json | jq -r '.[] | select(.cached) | .id'")
def models(fmt: FormatOpt = Format.auto) -> None:
    """The public BridgeTower checkpoints: their heads, image size, and whether they are in the local cache."""
    from ..model.hub import cached_snapshot

    records = [
        ModelRecord(c.id, list(c.heads), c.image_size, cached_snapshot(c.id) is not None, c.id in DEFAULT_FOR)
        for c in KNOWN_CHECKPOINTS
    ]
    render(records, fmt.value)


@app.command(epilog="Examples:\n\n  bt doctor\n\n  bt doctor -f json | jq .device")
def doctor(device: Device = "auto", dtype: DtypeOpt = Dtype.auto, fmt: FormatOpt = Format.auto) -> None:
    """What bt runs on: versions, device and dtype, threads, the cache and index paths, the cached checkpoints."""
    from .doctor import environment

    render_object(environment(device, dtype.value), fmt.value)


def _report(error: BtError, label: str = "error: ") -> None:
    message = error.message if len(error.message) <= 300 else error.message[:300] + "…"
    message = f"bt: {label}{message}"
    if error.hint:
        message += f" (hint: {error.hint})"
    stderr_console().print(message, markup=False, highlight=False, soft_wrap=True)


def _usage_error(error: UsageError) -> BtError:
    """Click's usage message as one of bt's lines: lower case, one line, the help to see as the hint."""
    message = " ".join(error.format_message().replace("Value error, ", "").split())
    command = error.ctx.command_path if error.ctx is not None else "bt"
    return BtError(message[:1].lower() + message[1:], f"see {command} --help")


def _end_of_pipe() -> None:
    """stdout's reader has gone (``bt ... | head -1``): end as standard filters do, killed by SIGPIPE (status 141
    in a shell), without a word."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)


def main(argv: list[str] | None = None) -> None:
    """The entry point and the one error boundary: bt's errors exit 1, usage errors 2 (the same one line), partial
    work 3, Ctrl-C 130; never a traceback unless BT_DEBUG=1."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] in ("--install-completion", "--show-completion") and argv[1] in SHELLS:
        # Typer takes a shell name there only with its shell detection off; without a name it detects the shell.
        os.environ["_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"] = "1"
    debug = os.environ.get("BT_DEBUG") == "1"
    try:
        code = app(args=argv, prog_name="bt", standalone_mode=False)
    except (StdoutClosed, BrokenPipeError):
        _end_of_pipe()
    except PartialSuccess as partial:
        _report(partial, label="")
        sys.exit(partial.exit_code)
    except BtError as error:
        if debug:
            raise
        _report(error)
        sys.exit(error.exit_code)
    except UsageError as error:
        if error.format_message():  # (empty after `bt` alone, which shows the help)
            _report(_usage_error(error))
        sys.exit(2)
    except ClickException as error:
        _report(BtError(error.format_message()))
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, Abort):  # (Typer itself ends a Ctrl-C in a command with status 130)
        sys.exit(130)
    except Exception as error:  # anything unexpected is still one line
        if debug:
            raise
        _report(BtError(f"unexpected {type(error).__name__}: {error}", "run again with BT_DEBUG=1 for the traceback"))
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
