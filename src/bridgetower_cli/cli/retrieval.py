"""Search and its index: ``bt retrieve`` (images for a text or an image, texts for an image) and ``bt index``
(build, refresh, --stats, --prune, --check, --repair)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BtError, IndexDamaged, UsageError
from ..model.catalog import DEFAULT_CONTRASTIVE_MODEL
from .common import emit, image_sources, model_command, only_images
from .options import (
    CheckFlag,
    Engine,
    EngineOpt,
    ExactSearch,
    Format,
    HitsK,
    IndexFile,
    IndexImages,
    LikeImage,
    NoRefresh,
    NoRerank,
    Null,
    NullLong,
    Print0,
    PruneFlag,
    QueryImage,
    QueryText,
    Quiet,
    RayAddress,
    Rebuild,
    RepairFlag,
    RerankK,
    RetrieveInputs,
    StatsFlag,
    TextOpt,
    TextsFile,
    TierFrom,
    Wait,
    format_option,
)

RetrieveFormat, IndexFormat = format_option("retrieve"), format_option("index")

if TYPE_CHECKING:
    from ..sources import ImageSource

RETRIEVE_EPILOG = (
    "Examples:\n\n"
    "  bt retrieve 'two cats on a couch' ~/Pictures\n\n"
    "  bt retrieve 'a rocket launch' samples/ -k 3 -f paths -0 | xargs -0 ls -l\n\n"
    "  bt retrieve --image samples/cat.jpg --texts-file captions.txt -k 5\n\n"
    "Text queries search an index of ITC image embeddings (built and refreshed as needed: new and changed files "
    "are embedded, deleted ones dropped), then the ITM head reranks the best --rerank-k hits, best match "
    f"probability first. Default model: {DEFAULT_CONTRASTIVE_MODEL}."
)


@model_command("retrieve")
def retrieve(
    inputs: RetrieveInputs = None,
    query_text: QueryText = None,
    image: QueryImage = None,
    text: TextOpt = None,
    texts_file: TextsFile = None,
    like: LikeImage = None,
    index_file: IndexFile = None,
    rebuild: Rebuild = False,
    no_refresh: NoRefresh = False,
    exact: ExactSearch = False,
    wait: Wait = 60.0,
    top_k: HitsK = 10,
    rerank_k: RerankK = None,
    no_rerank: NoRerank = False,
    fmt: RetrieveFormat = Format.auto,
    print0: Print0 = False,
    null: NullLong = False,
    quiet: Quiet = False,
    backend=None,
) -> None:
    """Rank images for a text or like an image (over a persistent index, ITM rerank), or texts for an image.

    A text query's best --rerank-k hits by ITC similarity are rescored by the ITM head; --image IMAGE ranks texts."""
    from ..operations import RankTexts, Search
    from ..records import Outcome
    from .render import StderrReporter

    if no_rerank and rerank_k is not None:
        raise UsageError("--no-rerank and --rerank-k contradict each other", "keep one of them")
    if print0 and fmt.value != "paths":
        raise UsageError("-0/--print0 ends each path with NUL: it goes with -f paths", "add -f paths, or drop -0")
    inputs, rerank_k = inputs or [], 0 if no_rerank else (5 if rerank_k is None else rerank_k)
    separator = "\0" if print0 else "\n"
    reporter, outcome = StderrReporter(quiet), Outcome()
    if image is not None:
        source, texts = _texts_for(image, inputs, text, texts_file)
        request = RankTexts(source, texts, top_k, rerank_k)
        return emit(backend.run(request, outcome, reporter), fmt, outcome, reporter, separator, f"texts for {image}")
    if text or texts_file:
        raise BtError(
            "--text and --texts-file give the texts to rank for an --image; a text query is the first argument",
            "bt retrieve 'QUERY' DIR... (or --query TEXT DIR...), or bt retrieve --image IMAGE --texts-file FILE",
        )
    query, specs, title = _query_of(inputs, query_text, like, no_refresh)
    if "-" in specs:  # (the paths on stdin, expanded here: a server gets them as paths too)
        specs = [s for s in specs if s != "-"] + [s.path for s in image_sources(["-"], null, reporter, outcome)]
    request = Search(query, specs, index_file, rebuild, not no_refresh, top_k, rerank_k, wait, exact=exact)
    emit(backend.run(request, outcome, reporter), fmt, outcome, reporter, separator, title)


def _texts_for(image: str, inputs: list[str], text, texts_file) -> tuple[ImageSource, list[str]]:
    """``--image IMAGE``: the one image and the texts to rank for it."""
    from ..sources import expand_image_sources, read_texts, split_arguments

    images, _ = split_arguments(inputs)
    if images:
        raise BtError(f"with --image the arguments are texts to rank; {images[0]} is an image", "pass texts")
    texts = read_texts([*inputs, *(text or [])], texts_file)
    sources = expand_image_sources([image])
    if len(sources) != 1:
        raise BtError(f"--image takes one image; {image} holds {len(sources)}", "name a single image file")
    return sources[0], texts


def _query_of(
    inputs: list[str], text: str | None, like: str | None, no_refresh: bool
) -> tuple[str | ImageSource, list[str], str]:
    """(the query: a text or an image, the specs to search, the title of a page of results). With -n and no specs,
    the whole index is searched."""
    from ..sources import expand_image_sources, read_texts, split_arguments

    if text is None and like is None and inputs and split_arguments(inputs[:1], "-Q")[0]:
        like, inputs = inputs[0], inputs[1:]  # an image file as the query: images like it
    if text is None and like is None:
        if not inputs:
            raise BtError("retrieve needs a query", "e.g. bt retrieve 'a cat' ~/Pictures (or --query TEXT)")
        (text,), inputs = read_texts(inputs[:1], None), inputs[1:]
    specs = only_images(inputs, "or folder to search", "the query is one argument: quote it, or give it with -Q")
    if like is not None:
        (query,) = expand_image_sources([like]) if Path(like).is_file() else [None]
        if query is None:
            raise BtError(f"--like takes one image file; {like} is not one", "name a single image file")
        return query, specs, f"images like {like}"
    return text, specs, text


INDEX_EPILOG = (
    "Examples:\n\n  bt index ~/Pictures\n\n  bt index photos/ --index photos.sqlite --rebuild\n\n"
    "  bt index --check && bt index --stats -f json\n\n"
    f"Default model: {DEFAULT_CONTRASTIVE_MODEL}."
)


@model_command("index")
def index(
    images: IndexImages = None,
    index_file: IndexFile = None,
    rebuild: Rebuild = False,
    stats: StatsFlag = False,
    prune: PruneFlag = False,
    check: CheckFlag = False,
    repair: RepairFlag = False,
    wait: Wait = 60.0,
    tier_from: TierFrom = None,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddress = None,
    fmt: IndexFormat = Format.auto,
    null: Null = False,
    quiet: Quiet = False,
    backend=None,
) -> None:
    """Build or refresh the retrieval index of local images; --stats, --prune, --check, --repair."""
    from ..index.files import default_index_path
    from ..index.store import EmbeddingIndex
    from .render import StderrReporter, render_object

    if check and repair:
        raise UsageError("--check and --repair exclude each other", "--repair checks the index first")
    path, reporter = index_file or default_index_path(), StderrReporter(quiet)
    if stats:
        with EmbeddingIndex.for_reading(path, check=False) as existing:
            render_object(existing.stats(), fmt.value)
            return existing.check_quickly()  # the figures first, then whatever damage they hide
    if prune:
        with EmbeddingIndex.for_writing(path, None, None, wait_s=wait) as existing:
            reporter.info(f"index: {existing.prune()} rows of files that are gone dropped")
            return render_object(existing.stats(), fmt.value)
    if check or repair:
        return _check(path, repair, wait, backend, fmt, reporter, index_file is not None)
    if not images:
        raise BtError("bt index needs images or folders to index", "e.g. bt index ~/Pictures (or --stats, --check)")
    from ..operations import Refresh
    from ..records import Outcome

    specs, outcome = only_images(images, "file or folder", "bt index takes images and folders"), Outcome()
    if "-" in specs:
        specs = [s for s in specs if s != "-"] + [s.path for s in image_sources(["-"], null, reporter, outcome)]
    request = Refresh(specs, path, rebuild, wait, engine.value, ray_address, named=index_file is not None,
                      tier_from=tier_from)  # fmt: skip
    emit([backend.run(request, outcome, reporter)], fmt, outcome, reporter)


def _check(path: Path, repair: bool, wait: float, backend, fmt: Format, reporter, named: bool) -> None:
    """``--check``: verify every row; ``--repair``: embed again exactly the damaged rows (the model must be the
    index's). Exit 1 while damage remains."""
    from ..operations import CheckIndex
    from ..records import Outcome
    from .render import render_object

    report = backend.run(CheckIndex(path, repair, wait, named), Outcome(), reporter)
    render_object(report, fmt.value)
    if report.repair == "rebuild":  # (the catalog itself: no repair reads it)
        raise IndexDamaged(f"the index {path} is damaged: its catalog ({report.catalog})", "rebuild it with --rebuild")
    if not report.sound:
        raise IndexDamaged(
            f"the index {path} is damaged: {report.damaged} rows ({report.vector_file})",
            "bt index --repair re-embeds them" if not repair else "rebuild it with --rebuild",
        )
