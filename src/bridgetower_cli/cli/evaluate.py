"""``bt eval``: image-text retrieval recall of a checkpoint on a caption set, by the BridgeTower protocol."""

from __future__ import annotations

from ..errors import PartialSuccess
from ..model.catalog import DEFAULT_CONTRASTIVE_MODEL
from .common import model_command
from .options import Annotations, Format, FormatOpt, ImagesRoot, ItcOnly, KTest, Quiet, Split

EPILOG = (
    "Examples:\n\n"
    "  bt eval samples/captions.json\n\n"
    "  bt eval dataset_flickr30k.json --images flickr30k-images --k-test 128 -f json\n\n"
    "  bt eval coco_karpathy_test.json --images coco/ --k-test 256 --itc-only\n\n"
    "The BridgeTower paper's protocol: ITC similarities, the ITM head on each image's and each caption's k-test "
    "most similar, the two merged by maximum; R@1/5/10 in percent. Default model: "
    f"{DEFAULT_CONTRASTIVE_MODEL}."
)


@model_command(DEFAULT_CONTRASTIVE_MODEL)
def evaluate(
    annotations: Annotations,
    images: ImagesRoot = None,
    split: Split = "test",
    k_test: KTest = 128,
    itc_only: ItcOnly = False,
    fmt: FormatOpt = Format.auto,
    quiet: Quiet = False,
    backend=None,
) -> None:
    """Image-text retrieval recall (R@1/5/10) of a checkpoint on a caption set, by the BridgeTower protocol."""
    from ..records import Outcome
    from ..tasks.captions import load_caption_set
    from .render import StderrReporter, render_object

    caption_set = load_caption_set(annotations, images or annotations.parent, split)
    reporter, outcome = StderrReporter(quiet), Outcome()
    record = backend.evaluate(caption_set, k_test, itc_only, outcome, reporter)
    render_object(record, fmt.value)
    if outcome.skipped:
        total = len(caption_set.images)
        raise PartialSuccess(
            f"{len(outcome.skipped)} of {total} images could not be read (named above): these recalls cover the "
            f"other {record.images} and their {record.texts} captions, not comparable with figures on the full set"
        )
