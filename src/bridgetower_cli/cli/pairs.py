"""Commands over image x text pairs: ``bt score``, ``bt fill-mask``, ``bt explain``."""

from __future__ import annotations

from ..errors import BtError
from ..model.catalog import DEFAULT_MATCHING_MODEL
from ..records import Outcome
from .common import emit, images_and_texts, model_command
from .options import (
    CandidatesK,
    Format,
    FormatOpt,
    ImagesAndTexts,
    Layer,
    PictureDir,
    PictureFile,
    Quiet,
    ScoreFormatOpt,
    ScoreTopK,
    Targets,
    TextOpt,
    TextsFile,
    Words,
)

SCORE_EPILOG = (
    "Examples:\n\n"
    "  bt score samples/cat.jpg 'a cat lying on a couch' 'a rocket launch'\n\n"
    "  bt score samples/ 'a cup of coffee' -k 1 -f json | jq '.[] | {image, probability}'\n\n"
    "  bt score 'photos/*.jpg' --texts-file captions.txt -f csv > scores.csv\n\n"
    f"Default model: {DEFAULT_MATCHING_MODEL}."
)


@model_command(DEFAULT_MATCHING_MODEL)
def score(
    inputs: ImagesAndTexts,
    text: TextOpt = None,
    texts_file: TextsFile = None,
    top_k: ScoreTopK = None,
    fmt: ScoreFormatOpt = Format.auto,
    quiet: Quiet = False,
    backend=None,
) -> None:
    """Image-text matching (ITM head) for every image x text pair; per image, the best match probability first."""
    from .render import StderrReporter

    sources, texts = images_and_texts(inputs, text, texts_file)
    reporter, outcome = StderrReporter(quiet), Outcome()
    title = f"bt score: {len(sources)} image(s) x {len(texts)} text(s)"
    emit(backend.score(sources, texts, outcome, reporter, top_k), fmt, outcome, reporter, title=title)


FILL_MASK_EPILOG = (
    "Examples:\n\n"
    "  bt fill-mask samples/cat.jpg 'a <mask> lying on a couch'\n\n"
    "  bt fill-mask samples/coffee.jpg 'a cup of <mask> on a <mask>' -k 3 -f json | jq '.[0].sequence'\n\n"
    "  bt fill-mask samples/ 'a photo of a <mask>' --targets cat,rocket,coffee,astronaut\n\n"
    f"Default model: {DEFAULT_MATCHING_MODEL}."
)


@model_command(DEFAULT_MATCHING_MODEL)
def fill_mask(
    inputs: ImagesAndTexts,
    text: TextOpt = None,
    texts_file: TextsFile = None,
    targets: Targets = None,
    top_k: CandidatesK = 5,
    fmt: FormatOpt = Format.auto,
    quiet: Quiet = False,
    backend=None,
) -> None:
    """Predict the <mask> words of each text, conditioned on each image (MLM head)."""
    from .render import StderrReporter

    sources, texts = images_and_texts(inputs, text, texts_file)
    words = [w.strip() for w in targets.split(",") if w.strip()] if targets else None
    reporter, outcome = StderrReporter(quiet), Outcome()
    emit(backend.fill_mask(sources, texts, outcome, reporter, top_k, words), fmt, outcome, reporter)


EXPLAIN_EPILOG = (
    "Examples:\n\n"
    "  bt explain samples/cat.jpg 'a cat lying on a couch' -o cat.png\n\n"
    "  bt explain samples/ 'a cup of coffee' 'a rocket' --output-dir maps/ --words\n\n"
    "  bt explain samples/cat.jpg 'a cat' -f json | jq '.[0].tokens[].token'\n\n"
    "The Grad-CAM of the ITM match logit over the cross-attention of one fusion layer (as LAVIS computes it): "
    f"brighter where the text's words attend and raise the match. Default model: {DEFAULT_MATCHING_MODEL}."
)


@model_command(DEFAULT_MATCHING_MODEL, server=False)
def explain(
    inputs: ImagesAndTexts,
    text: TextOpt = None,
    texts_file: TextsFile = None,
    layer: Layer = None,
    words: Words = False,
    output: PictureFile = None,
    output_dir: PictureDir = None,
    fmt: FormatOpt = Format.auto,
    quiet: Quiet = False,
    backend=None,
) -> None:
    """Where in each image the model looks for each text: Grad-CAM heat maps (ITM head), as PNG and as numbers."""
    from .render import StderrReporter, resolve_format

    sources, texts = images_and_texts(inputs, text, texts_file)
    if output is not None and output_dir is not None:
        raise BtError("--output and --output-dir exclude each other", "--output for one pair, --output-dir for several")
    if output is not None and len(sources) * len(texts) != 1:
        raise BtError(
            f"--output writes one picture; {len(sources)} image(s) x {len(texts)} text(s) make more",
            "use --output-dir DIR",
        )
    reporter, outcome = StderrReporter(quiet), Outcome()
    runtime, batch_size = backend.runtime(reporter, ("itm",))
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

    emit(records(), fmt, outcome, reporter)
