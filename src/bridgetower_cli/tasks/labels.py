"""Labels and prompt templates for zero-shot classification, read and checked without torch (a bad template or an
empty label list is said before any model loads)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BtError, UsageError
from ..sources import ImageSource

METHODS = ("auto", "itc", "itm", "rerank")

# CLIP's seven-template subset for ImageNet (OpenAI, "Prompt Engineering for ImageNet" notebook: chosen there by
# sequential forward selection over its 80 templates). Seven prompts per label cost an eleventh of the text passes,
# and of the ITM pairs of --method itm, that the 80 would.
DEFAULT_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def prompts(labels: list[str], templates: list[str]) -> list[str]:
    """Each label in each template, label by label."""
    return [template.replace("{}", label) for label in labels for template in templates]


def read_labels(given: list[str] | None, labels_file: Path | None) -> list[str]:
    """Labels from ``--labels a,b,c`` (repeatable) or ``--labels-file`` (one per line), in order, each once."""
    if given and labels_file is not None:
        raise UsageError("--labels and --labels-file exclude each other", "give the labels one way")
    if labels_file is not None:
        return check_labels(read_lines(labels_file))
    labels = [label.strip() for item in given or [] for label in item.split(",")]
    if "" in labels:
        raise UsageError("an empty label in --labels", "separate labels with single commas, e.g. --labels cat,dog")
    return check_labels(labels)


def check_labels(labels: list[str]) -> list[str]:
    """Two labels or more, each once."""
    if len(labels) < 2:
        raise BtError(f"{len(labels)} label(s): classifying needs two or more", "e.g. --labels cat,dog,rocket")
    seen: set[str] = set()  # (a set, not counting each one: a million labels are checked in linear time)
    twice = next((label for label in labels if label in seen or seen.add(label)), None)
    if twice is not None:
        raise BtError(f"the label {twice!r} is given twice", "give each label once")
    return labels


def read_templates(given: list[str] | None, templates_file: Path | None) -> list[str]:
    """Templates from ``--template`` (repeatable) or ``--templates`` (one per line); CLIP's seven by default. Each
    holds ``{}`` once, where the label goes."""
    if given and templates_file is not None:
        raise UsageError("--template and --templates exclude each other", "give the templates one way")
    templates = list(given) if given else read_lines(templates_file) if templates_file is not None else []
    return check_templates(templates) or list(DEFAULT_TEMPLATES)


def check_templates(templates: list[str]) -> list[str]:
    """Each template holds ``{}`` once, where the label goes."""
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise BtError(f"the template {template!r} must hold {{}} once", 'e.g. --template "a photo of a {}."')
    return templates


def read_lines(path: Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as error:
        raise BtError(f"cannot read {path}: {error.strerror or error}", "check the path") from None
    except UnicodeDecodeError:
        raise BtError(f"{path} is not UTF-8 text", "save it as UTF-8") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass
class LabelledFolder:
    """An ImageFolder: one sub-folder per class (sorted by name), its images (any depth), each image's class."""

    classes: list[str]
    sources: list[ImageSource]
    targets: list[int]


def labelled_folder(folder: Path, labels_file: Path | None = None) -> LabelledFolder:
    """The images of ``folder`` by class sub-folder; the class names are the folders' unless ``labels_file`` gives
    one per line, in the folders' sorted order (as CLIP_benchmark's class-name lists)."""
    from ..sources import expand_image_sources

    if not folder.is_dir():
        raise BtError(f"{folder} is not a folder", "pass an ImageFolder: one sub-folder of images per class")
    found = [entry for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith(".")]
    folders = sorted(found, key=lambda entry: entry.name)
    if len(folders) < 2:
        raise BtError(f"{folder} has {len(folders)} class folders", "an ImageFolder has one sub-folder per class")
    classes = [entry.name for entry in folders]
    if labels_file is not None:
        classes = read_lines(labels_file)
        if len(classes) != len(folders):
            raise BtError(f"{labels_file} has {len(classes)} labels for {len(folders)} class folders", "one per line")
    sources, targets = [], []
    for target, entry in enumerate(folders):
        try:
            found = expand_image_sources([os.path.join(str(folder), entry.name)])
        except BtError:
            raise BtError(f"the class folder {entry.path} holds no images", "remove it, or add its images") from None
        sources += found
        targets += [target] * len(found)
    return LabelledFolder(classes, sources, targets)
