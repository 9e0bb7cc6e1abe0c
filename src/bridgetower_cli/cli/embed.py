"""``bt embed``: ITC embeddings of images, texts or pairs, to stdout, a ``.npy``/``.npz`` file, or Parquet shards."""

from __future__ import annotations

from ..errors import BtError, UsageError
from ..model.catalog import DEFAULT_CONTRASTIVE_MODEL
from .common import emit, image_sources, model_command, only_images
from .options import (
    Engine,
    EngineOpt,
    Format,
    ImageArgs,
    Kind,
    Null,
    OutputFile,
    Quiet,
    RayAddress,
    TextOpt,
    TextsFile,
    format_option,
)

EmbedFormat = format_option("embed")

EPILOG = (
    "Examples:\n\n"
    "  bt embed samples/ -f jsonl > images.jsonl\n\n"
    "  bt embed --text 'a cat' --text 'a dog' -f json | jq '.[].dim'\n\n"
    "  bt embed 'photos/*.jpg' --output photos.npz\n\n"
    "  bt embed samples/cat.jpg --kind cross --text 'a cat on a couch'\n\n"
    f"Default model: {DEFAULT_CONTRASTIVE_MODEL}."
)


@model_command("embed")
def embed(
    images: ImageArgs = None,
    kind: Kind = None,
    text: TextOpt = None,
    texts_file: TextsFile = None,
    output: OutputFile = None,
    fmt: EmbedFormat = Format.auto,
    quiet: Quiet = False,
    engine: EngineOpt = Engine.local,
    ray_address: RayAddress = None,
    null: Null = False,
    backend=None,
) -> None:
    """L2-normalised ITC embeddings of images, texts, or (image, text) pairs (--kind cross).

    Image and text embeddings come from the unimodal towers alone; cross embeddings need both an image and a text."""
    from ..operations import Embed
    from ..records import Outcome
    from ..sources import read_texts
    from .render import StderrReporter, render_object, write_embeddings

    specs = only_images(images or [], "file or folder")
    if "-" in specs and texts_file == "-":
        raise BtError("standard input cannot hold both image paths and texts", "pass the texts with --texts-file FILE")
    if output is not None and output.suffix not in (".npy", ".npz") and engine is Engine.local:
        raise UsageError(f"cannot write {output}: unknown format", "use a file name ending in .npy or .npz")
    texts = read_texts(text or [], texts_file) if (text or texts_file) else []
    reporter, outcome = StderrReporter(quiet), Outcome()
    sources = image_sources(specs, null, reporter, outcome)
    kinds = [kind] if kind is not None else [k for k, given in (("image", sources), ("text", texts)) if given]
    if not kinds:
        raise UsageError("nothing to embed", "pass image sources, or texts with --text / --texts-file")
    requests = [Embed(k, sources if k != "text" else [], texts if k != "image" else []) for k in kinds]
    if engine is Engine.ray:
        if not hasattr(backend, "runtime"):
            raise BtError("--engine ray runs here, not on a bt server", "drop --server, or --engine ray")
        return _on_ray(backend.options, ray_address, kinds, sources, output, fmt, outcome, reporter)
    records = (record for request in requests for record in backend.run(request, outcome, reporter))
    if output is None:
        return emit(records, fmt, outcome, reporter)
    render_object(write_embeddings(records, output, backend.options.model), fmt.value)
    reporter.finish(outcome)


def _on_ray(options, address, kinds, sources, output, fmt, outcome, reporter) -> None:
    """``--engine ray``: image embeddings on Ray Data; with --output DIR, Parquet shards (resumable)."""
    from ..engines.ray import RayEngine, Shards
    from ..model.hub import resolve_checkpoint
    from ..records import EmbeddingRecord, EmbeddingsWritten
    from .render import render_object

    if kinds != ["image"]:
        raise BtError("--engine ray embeds images", "embed texts and pairs with --engine local")
    if any(s.is_url for s in sources):
        raise BtError("--engine ray reads local files (or a shared file system), not URLs", "download them first")
    checkpoint = resolve_checkpoint(options.model, options.revision)
    o = options
    engine = RayEngine.for_checkpoint(checkpoint, o.model, o.device, o.dtype, address, o.fast_decode)
    shards = Shards(output, sources, options.model)
    if output is not None and len(shards.todo) < len(sources):
        reporter.info(f"{len(sources) - len(shards.todo)} images already in complete shards of {output}: resuming")

    def records():
        with reporter.progress(len(shards.todo), "embedding images") as advance:
            for batch in engine.embed(shards.todo, options.batch_size or 8):
                for item in batch:
                    if item.error:
                        outcome.skip(item.name, item.error, reporter)
                    else:
                        vector = item.embedding.tolist()
                        yield EmbeddingRecord(item.name, None, "image", options.model, len(vector), vector)
                    shards.done(item)
                advance(len(batch))

    if output is None:
        return emit(records(), fmt, outcome, reporter)
    written = sum(1 for _ in records())
    render_object(EmbeddingsWritten(str(output), written, engine.dim, options.model), fmt.value)
    reporter.finish(outcome)
