"""``bt classify``: zero-shot labels for images (and the options ``bt eval --task classification`` shares)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from ..model.catalog import DEFAULT_CONTRASTIVE_MODEL
from .common import emit, image_sources, model_command, only_images
from .options import Format, ImageArgs, Null, Quiet, format_option
from .params import Option

Labels = Annotated[
    list[str] | None,
    Option("--labels", "-l", help="Labels, comma-separated (repeat for more).", metavar="A,B,...", show_default=False),
]
LabelsFile = Annotated[
    Path | None, Option("--labels-file", "-L", help="Labels, one per line.", metavar="FILE", show_default=False)
]
MethodOpt = Annotated[
    str,
    Option(
        "--method",
        help="itc: prompt-ensembled ITC (CLIP's); itm: the ITM head on every (image, prompt); rerank: ITC shortlist, "
        "ITM on it. auto: itc with ITC heads, else itm.",
        metavar="auto|itc|itm|rerank",
        autocompletion=lambda: ["auto", "itc", "itm", "rerank"],
    ),
]
TemplateOpt = Annotated[
    list[str] | None,
    Option(
        "--template",
        help="A prompt template with {} for the label (repeat). Default: CLIP's seven ImageNet templates.",
        metavar="TEXT",
        show_default=False,
    ),
]
TemplatesFile = Annotated[
    Path | None, Option("--templates", help="Templates, one per line.", metavar="FILE", show_default=False)
]
ClassifyFormat = format_option("classify")
LabelsK = Annotated[int, Option("--top-k", "-k", help="Labels shown per image.", metavar="K")]
ShortlistK = Annotated[
    int,
    Option("--rerank-k", "-r", help="rerank: how many ITC-best labels the ITM head scores.", metavar="K"),
]

EPILOG = (
    "Examples:\n\n"
    "  bt classify samples/ --labels cat,rocket,coffee,astronaut\n\n"
    "  bt classify photos/ --labels-file imagenet.txt --method rerank -r 20 -k 3 -f jsonl\n\n"
    '  bt classify cat.jpg -l "a cat,a dog" --template "{}" --method itm\n\n'
    "Each label goes into every template and the prompts are encoded once; ITC averages a label's prompt embeddings "
    "(CLIP's prompt ensembling) and scales cosines by the checkpoint's logit_scale; ITM averages the match logit over "
    "the templates. Probabilities: a softmax over the labels (the shortlist, for rerank). Default templates: CLIP's "
    f"seven-template ImageNet subset. Default model: {DEFAULT_CONTRASTIVE_MODEL}."
)


@model_command("classify")
def classify(
    images: ImageArgs = None,
    labels: Labels = None,
    labels_file: LabelsFile = None,
    method: MethodOpt = "auto",
    template: TemplateOpt = None,
    templates_file: TemplatesFile = None,
    top_k: LabelsK = 5,
    rerank_k: ShortlistK = 10,
    fmt: ClassifyFormat = Format.auto,
    null: Null = False,
    quiet: Quiet = False,
    backend=None,
) -> None:
    """Zero-shot labels for images: the most probable of --labels for each, by ITC, ITM or both."""
    from ..operations import Classify
    from ..records import Outcome
    from ..tasks.labels import read_labels, read_templates
    from .render import StderrReporter

    specs = only_images(images or [], "file or folder", "labels go in --labels")
    names, templates = read_labels(labels, labels_file), read_templates(template, templates_file)
    reporter, outcome = StderrReporter(quiet), Outcome()
    sources = image_sources(specs, null, reporter, outcome)
    request = Classify(sources, names, templates, method, top_k, rerank_k)
    emit(backend.run(request, outcome, reporter), fmt, outcome, reporter)
