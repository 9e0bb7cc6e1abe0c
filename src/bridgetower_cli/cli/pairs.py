"""Commands over image x text pairs: ``bt score``, ``bt fill-mask``, ``bt explain``."""

from __future__ import annotations

from ..errors import BtError, UsageError
from ..model.catalog import DEFAULT_MATCHING_MODEL
from ..sources import MASK
from .common import emit, images_and_texts, model_command
from .options import (
    CandidatesK,
    Format,
    ImagesAndTexts,
    Layer,
    Null,
    PictureDir,
    PictureFile,
    Quiet,
    ScoreTopK,
    Targets,
    TextOpt,
    TextsFile,
    Words,
    format_option,
)

ScoreFormat, FillMaskFormat, ExplainFormat = (format_option(c) for c in ("score", "fill-mask", "explain"))
SCORE_EPILOG = (
    "Examples:\n\n"
    "  bt score samples/cat.jpg 'a cat lying on a couch' 'a rocket launch'\n\n"
    "  bt score samples/ 'a cup of coffee' -k 1 -f json | jq '.[] | {image, probability}'\n\n"
    "  bt score 'photos/*.jpg' --texts-file captions.txt -f csv > scores.csv\n\n"
    f"Default model: {DEFAULT_MATCHING_MODEL}."
)


@model_command("score")
def score(
    inputs: ImagesAndTexts,
    text: TextOpt = None,
    texts_file: TextsFile = None,
    top_k: ScoreTopK = None,
    fmt: ScoreFormat = Format.auto,
    null: Null = False,
    quiet: Quiet = False,
    backend=None,
) -> None:
    """Image-text matching (ITM head) for every image x text pair; per image, the best match probability first."""
    from ..operations import Score
    from ..records import Outcome
    from .render import StderrReporter

    reporter, outcome = StderrReporter(quiet), Outcome()
    sources, texts = images_and_texts(inputs, text, texts_file, null, reporter, outcome)
    request = Score(sources, texts, top_k)
    title = f"bt score: {len(sources)} image(s) x {len(texts)} text(s)"
    emit(backend.run(request, outcome, reporter), fmt, outcome, reporter, title=title)


FILL_MASK_EPILOG = (
    "Examples:\n\n"
    "  bt fill-mask samples/cat.jpg 'a <mask> lying on a couch'\n\n"
    "  bt fill-mask samples/coffee.jpg 'a cup of <mask> on a <mask>' -k 3 -f json | jq '.[0].sequence'\n\n"
    "  bt fill-mask samples/ 'a photo of a <mask>' --targets cat,rocket,coffee,astronaut\n\n"
    f"Default model: {DEFAULT_MATCHING_MODEL}."
)


@model_command("fill-mask")
def fill_mask(
    inputs: ImagesAndTexts,
    text: TextOpt = None,
    texts_file: TextsFile = None,
    targets: Targets = None,
    top_k: CandidatesK = 5,
    fmt: FillMaskFormat = Format.auto,
    null: Null = False,
    quiet: Quiet = False,
    backend=None,
) -> None:
    """Predict the <mask> words of each text, conditioned on each image (MLM head)."""
    from ..operations import FillMask
    from ..records import Outcome
    from .render import StderrReporter

    reporter, outcome = StderrReporter(quiet), Outcome()
    sources, texts = images_and_texts(inputs, text, texts_file, null, reporter, outcome)
    texts = with_masks(texts, outcome, reporter)
    request = FillMask(sources, texts, top_k, targets.split(",") if targets is not None else None)
    emit(backend.run(request, outcome, reporter), fmt, outcome, reporter)


def with_masks(texts: list[str], outcome, reporter) -> list[str]:
    """The texts that hold a <mask> (the public checkpoints' RoBERTa mask token); each other one is skipped, named,
    before any model loads."""
    kept = []
    for text in texts:
        if MASK in text:
            kept.append(text)
        else:
            hint = f"write {MASK} (not [MASK])" if "[MASK]" in text else f"mark the words to predict with {MASK}"
            outcome.skip(f"text {text[:40]!r}", f"no {MASK} in it ({hint})", reporter)
    return kept or texts  # (none: the request refuses them, in the words every way in uses)


EXPLAIN_EPILOG = (
    "Examples:\n\n"
    "  bt explain samples/cat.jpg 'a cat lying on a couch' -o cat.png\n\n"
    "  bt explain samples/ 'a cup of coffee' 'a rocket' --output-dir maps/ --words\n\n"
    "  bt explain samples/cat.jpg 'a cat' -f json | jq '.[0].tokens[].token'\n\n"
    "The Grad-CAM of the ITM match logit over the cross-attention of one fusion layer (as LAVIS computes it): "
    f"brighter where the text's words attend and raise the match. Default model: {DEFAULT_MATCHING_MODEL}."
)


@model_command("explain")
def explain(
    inputs: ImagesAndTexts,
    text: TextOpt = None,
    texts_file: TextsFile = None,
    layer: Layer = None,
    words: Words = False,
    output: PictureFile = None,
    output_dir: PictureDir = None,
    fmt: ExplainFormat = Format.auto,
    null: Null = False,
    quiet: Quiet = False,
    backend=None,
) -> None:
    """Where in each image the model looks for each text: Grad-CAM heat maps (ITM head), as pictures and numbers."""
    from ..operations import Explain
    from ..records import Outcome
    from .render import StderrReporter, resolve_format

    if output is not None and output_dir is not None:
        raise UsageError(
            "--output and --output-dir exclude each other", "--output for one pair, --output-dir for several"
        )
    reporter, outcome = StderrReporter(quiet), Outcome()
    sources, texts = images_and_texts(inputs, text, texts_file, null, reporter, outcome)
    request = Explain(sources, texts, layer)
    if output is not None and len(sources) * len(texts) != 1:
        raise BtError(
            f"--output writes one picture; {len(sources)} image(s) x {len(texts)} text(s) make more",
            "use --output-dir DIR",
        )
    names = picture_names(sources, texts, output, output_dir)
    explained = backend.run(request, outcome, reporter)
    if output is None and output_dir is None and resolve_format(fmt.value) == "table":
        reporter.info("no pictures written: pass --output FILE.png or --output-dir DIR")
    emit(_drawn(explained, sources, names, words, reporter), fmt, outcome, reporter)


def _drawn(records, sources, names: dict, words: bool, reporter):
    """Each record, its picture written first where one is asked for: the map over the image as the model saw it
    (decoded again here, once per image, at the short side the work reported)."""
    from ..pictures import explained_picture, model_view
    from .pictures import save_picture

    by_name, seen = {source.name: source for source in sources}, {}
    for record in records:
        if names:
            if record.image not in seen:
                seen.clear()
                seen[record.image] = model_view(by_name[record.image], reporter.facts["image_size"])
            picture = explained_picture(seen[record.image], record, reporter.facts["image_size"], words)
            path = names[record.image, record.text]
            save_picture(picture, path)
            record.picture = str(path)
        yield record


def picture_names(sources, texts, output, output_dir) -> dict:
    """(image name, text) -> the file each picture goes to, decided before any work: one per pair, never two pairs
    on one file (names that would collide get -2, -3, ...), in a format its suffix names."""
    from .pictures import picture_format, picture_name

    if output is not None:
        picture_format(output)
        return {(sources[0].name, texts[0]): output}
    if output_dir is None:
        return {}
    names, taken = {}, set()
    for source in sources:
        for text in texts:
            name, k = picture_name(source.name, text), 1
            while name in taken:
                k += 1
                stem, dot, suffix = picture_name(source.name, text).rpartition(".")
                name = f"{stem}-{k}{dot}{suffix}"
            taken.add(name)
            names[source.name, text] = output_dir / name
    return names
