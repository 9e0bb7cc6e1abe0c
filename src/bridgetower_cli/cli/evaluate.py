"""``bt eval``: image-text retrieval recall on a caption set, by the BridgeTower protocol; zero-shot classification
accuracy on a labelled folder (``--task classification``)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

from ..errors import BtError, PartialSuccess
from ..model.catalog import DEFAULT_CONTRASTIVE_MODEL
from .classify import LabelsFile, MethodOpt, ShortlistK, TemplateOpt, TemplatesFile
from .common import model_command
from .options import Annotations, Format, ImagesRoot, ItcOnly, KTest, Quiet, Split, format_option
from .params import Option

EPILOG = (
    "Examples:\n\n"
    "  bt eval samples/captions.json\n\n"
    "  bt eval dataset_flickr30k.json --images flickr30k-images --k-test 128 -f json\n\n"
    "  bt eval coco_karpathy_test.json --images coco/ --k-test 256 --itc-only\n\n"
    "  bt eval --task classification imagenette/val --labels-file classes.txt --confusion confusion.csv\n\n"
    "The BridgeTower paper's protocol: ITC similarities, the ITM head on each image's and each caption's k-test "
    "most similar, the two merged by maximum; R@1/5/10 in percent. Default model: "
    f"{DEFAULT_CONTRASTIVE_MODEL}."
)


class Task(str, Enum):
    retrieval = "retrieval"
    classification = "classification"


TaskOpt = Annotated[
    Task,
    Option(
        "--task",
        help="retrieval: recall on a caption set (ANNOTATIONS); classification: zero-shot accuracy on an ImageFolder "
        "(ANNOTATIONS is the folder: one sub-folder of images per class).",
        case_sensitive=False,
    ),
]
Confusion = Annotated[
    Path | None,
    Option(
        "--confusion",
        help="classification: write the confusion matrix (rows: true class, columns: predicted) as CSV.",
        metavar="FILE.csv",
        show_default=False,
    ),
]


EvalFormat = format_option("eval")


@model_command("eval")
def evaluate(
    annotations: Annotations,
    task: TaskOpt = Task.retrieval,
    images: ImagesRoot = None,
    split: Split = "test",
    k_test: KTest = 128,
    itc_only: ItcOnly = False,
    labels_file: LabelsFile = None,
    method: MethodOpt = "auto",
    template: TemplateOpt = None,
    templates_file: TemplatesFile = None,
    rerank_k: ShortlistK = 10,
    confusion: Confusion = None,
    fmt: EvalFormat = Format.auto,
    quiet: Quiet = False,
    backend=None,
) -> None:
    """Retrieval recall on a caption set, or zero-shot accuracy on an ImageFolder (--task classification).

    Retrieval: R@1/5/10 by the BridgeTower protocol; classification: CLIP_benchmark's acc1, acc5 and mean per-class
    recall."""
    from ..operations import Evaluate
    from ..records import Outcome
    from ..tasks.captions import load_caption_set
    from .render import StderrReporter, render_object

    if task is Task.classification:
        return _classification(annotations, labels_file, method, template, templates_file, rerank_k, confusion, fmt,
                               quiet, backend)  # fmt: skip

    caption_set = load_caption_set(annotations, images or annotations.parent, split)
    reporter, outcome = StderrReporter(quiet), Outcome()
    request = Evaluate(caption_set.sources(), caption_set.texts, caption_set.text_image, k_test, itc_only)
    record = backend.run(request, outcome, reporter)
    render_object(record, fmt.value)
    if outcome.skipped:
        total = len(caption_set.images)
        raise PartialSuccess(
            f"{len(outcome.skipped)} of {total} images could not be read (named above): these recalls cover the "
            f"other {record.images} and their {record.texts} captions, not comparable with figures on the full set"
        )


def _classification(folder, labels_file, method, template, templates_file, rerank_k, confusion, fmt, quiet, backend):
    """``--task classification``: CLIP_benchmark's acc1, acc5 and mean per-class recall on an ImageFolder."""
    import csv

    from ..operations import EvaluateClassification
    from ..records import Outcome
    from ..tasks.labels import labelled_folder, read_templates
    from .render import StderrReporter, render_object

    data, templates = labelled_folder(folder, labels_file), read_templates(template, templates_file)
    if confusion is not None and confusion.suffix.lower() != ".csv":
        raise BtError(f"--confusion writes CSV; {confusion} does not end in .csv", "e.g. --confusion confusion.csv")
    reporter, outcome = StderrReporter(quiet), Outcome()
    request = EvaluateClassification(data.sources, data.targets, data.classes, templates, method, rerank_k)
    record = backend.run(request, outcome, reporter)
    matrix = reporter.facts["confusion"]
    render_object(record, fmt.value)
    if confusion is not None:
        with open(confusion, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["true \\ predicted", *data.classes])
            writer.writerows([label, *row] for label, row in zip(data.classes, matrix))
        reporter.info(f"confusion matrix written to {confusion}")
    if outcome.skipped:
        raise PartialSuccess(
            f"{len(outcome.skipped)} of {len(data.sources)} images could not be read (named above): these accuracies "
            f"cover the other {record.images}"
        )
