"""What each operation is asked: one dataclass per operation that checks itself when it is made, so the command
line, the Python API and a server refuse the same input with the same words, before any model loads. Each also
states its cost (``Cost``) from its declared sizes alone, for a server to admit or refuse before building anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, UsageError
from ..model.catalog import classify_heads, retrieval_heads
from ..records import (
    ClassificationEvalRecord,
    EmbeddingRecord,
    EvalRecord,
    ExplainRecord,
    FillMaskRecord,
    IndexCheck,
    LabelRecord,
    RefreshStats,
    RetrievalRecord,
    ScoreRecord,
)
from ..sources import ImageSource, check_texts
from .table import operation

EMBEDDING_KINDS = ("image", "text", "cross")
CLASSIFY_METHODS = ("auto", "itc", "itm", "rerank")
MASK = "<mask>"  # the public checkpoints' (RoBERTa's) mask token


@dataclass(frozen=True)
class Cost:
    """What a request asks for, counted before any work: model pairs, mask candidates, images, texts, prompts."""

    pairs: int = 0
    candidates: int = 0
    images: int = 0
    texts: int = 0
    prompts: int = 0
    prompt_characters: int = 0  # of the prompts the work builds (labels x templates): more than the body holds


def count(name: str, value, least: int = 1, most: int | None = None, optional: bool = False) -> None:
    """A whole number in [least, most] (None allowed when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least or (most is not None and value > most):
        bound = f"from {least} to {most}" if most is not None else f"of {least} or more"
        raise UsageError(f"{name} must be a whole number {bound}, not {value!r}", f"e.g. {name} {max(least, 5)}")


def seconds(name: str, value) -> None:
    """A duration of 0 seconds or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise UsageError(f"{name} must be 0 seconds or more, not {value!r}", f"e.g. {name} 60")


def one_of(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{name} {value!r} is not one of {', '.join(choices)}", f"use one of: {', '.join(choices)}")


def images_given(images, what: str) -> None:
    if not images:
        raise UsageError(f"no images given to {what}", "pass image files, directories, globs or URLs")
    for image in images:
        if not isinstance(image, ImageSource):
            raise UsageError(f"an image is a {type(image).__name__}", "pass paths, PIL images or bytes")


def texts_given(texts, what: str) -> None:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise UsageError(f"{what} takes a list of texts, not a {type(texts).__name__}", "pass a list of strings")
    if not texts:
        raise UsageError(f"{what} needs texts", "pass one or more texts")
    if not all(isinstance(text, str) for text in texts):
        raise UsageError(f"{what} takes texts (strings)", "pass a list of strings")
    check_texts(texts)


@operation("score", ScoreRecord, "score", "/v1/score", lambda q: (("itm",), ()), "pairs:run_score")
@dataclass
class Score:
    """ITM match of every image x text pair; per image, the best ``top_k`` (all when None)."""

    images: list[ImageSource]
    texts: list[str]
    top_k: int | None = None

    def __post_init__(self):
        texts_given(self.texts, "score")
        images_given(self.images, "score")
        count("top-k", self.top_k, optional=True)

    def cost(self) -> Cost:
        return Cost(len(self.images) * len(self.texts), images=len(self.images), texts=len(self.texts))


@operation("fill_mask", FillMaskRecord, "fill-mask", "/v1/fill-mask", lambda q: (("mlm",), ()), "pairs:run_fill_mask")
@dataclass
class FillMask:
    """The ``<mask>`` words of each text given each image: ``top_k`` candidates per mask, among ``targets`` if
    given."""

    images: list[ImageSource]
    texts: list[str]
    top_k: int = 5
    targets: list[str] | None = None

    def __post_init__(self):
        texts_given(self.texts, "fill-mask")
        images_given(self.images, "fill-mask")
        count("top-k", self.top_k, most=1000)
        if not any(MASK in text for text in self.texts):
            raise InputError(f"no text holds a {MASK}", f"mark the words to predict with {MASK}")
        if self.targets is not None and not [word for word in self.targets if word.strip()]:
            raise UsageError("the target words are empty", "e.g. --targets cat,dog (or leave them out)")

    def cost(self) -> Cost:
        masks = sum(text.count(MASK) for text in self.texts)
        n = len(self.images)
        return Cost(n * len(self.texts), n * masks * self.top_k, n, len(self.texts))


@operation("embed", EmbeddingRecord, "embed", "/v1/embed", lambda q: (("itc",), ()), "pairs:run_embed")
@dataclass
class Embed:
    """L2-normalised ITC embeddings of the images, of the texts, or (``cross``) of each image x text pair."""

    kind: str
    images: list[ImageSource] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def __post_init__(self):
        one_of("kind", self.kind, EMBEDDING_KINDS)
        if self.kind == "cross" and not (self.images and self.texts):
            raise UsageError("kind cross needs images and texts", "pass both, or choose another kind")
        if self.kind != "text":
            images_given(self.images, f"kind {self.kind}")
        if self.kind != "image":
            texts_given(self.texts, f"kind {self.kind}")

    def cost(self) -> Cost:
        pairs = len(self.images) * len(self.texts) if self.kind == "cross" else 0
        return Cost(pairs, images=len(self.images), texts=len(self.texts))


@operation(
    "rank_texts",
    RetrievalRecord,
    "retrieve",
    "/v1/retrieve",
    lambda q: retrieval_heads(q.rerank_k),
    "retrieve:rank_texts",
)
@dataclass
class RankTexts:
    """Texts for an image: the ITC shortlist, its best ``rerank_k`` rescored by ITM."""

    image: ImageSource
    texts: list[str]
    top_k: int = 10
    rerank_k: int = 5

    def __post_init__(self):
        texts_given(self.texts, "ranking texts")
        images_given([self.image], "ranking texts")
        count("top-k", self.top_k, most=10000)
        count("rerank-k", self.rerank_k, least=0, most=10000)

    def cost(self) -> Cost:
        return Cost(len(self.texts), images=1, texts=len(self.texts))


@operation("search", RetrievalRecord, "retrieve", "/v1/retrieve", lambda q: q.heads(), "retrieve:retrieve_images")
@dataclass
class Search:
    """Images for a text, or like an image, over an index: refreshed for the images under ``specs`` first (files,
    folders, globs as given), or with ``refresh`` off queried as it is (with no specs: the whole index). ``files``
    and ``folders``, once found (here, or by the client of a server of one's own), are what the search covers."""

    query: str | ImageSource
    specs: list[str] = field(default_factory=list)
    index: Path | None = None
    rebuild: bool = False
    refresh: bool = True
    top_k: int = 10
    rerank_k: int = 5
    wait_s: float = 60.0
    files: list[ImageSource] | None = None
    folders: list[Path] | None = None
    exact: bool = False  # every row, past an approximate tier

    def __post_init__(self):
        if isinstance(self.query, str):
            texts_given([self.query], "a text query")
        elif not isinstance(self.query, ImageSource):
            raise UsageError(f"a query is a text or an image, not a {type(self.query).__name__}", "pass a text")
        count("top-k", self.top_k, most=10000)
        count("rerank-k", self.rerank_k, least=0, most=10000)
        if self.refresh and not (self.specs or self.files or self.folders):
            raise UsageError(
                "retrieve needs images to search", "name folders or files, or pass -n to search the whole index"
            )
        if self.rebuild and not self.refresh:
            raise UsageError("rebuilding an index needs images to index", "drop --no-refresh or --rebuild")
        seconds("wait", self.wait_s)

    @property
    def by_image(self) -> bool:
        return isinstance(self.query, ImageSource)

    def heads(self):
        """An image query ranks by ITC alone; a text query's shortlist is reranked by ITM (``rerank_k`` > 0)."""
        return (("itc",), retrieval_heads(0)[1]) if self.by_image else retrieval_heads(self.rerank_k)

    def cost(self) -> Cost:
        return Cost(self.rerank_k, images=len(self.specs) + len(self.files or ()), texts=1)


@operation("index", RefreshStats, "index", "/v1/index", lambda q: (("itc",), ()), "indexing:run_refresh", single=True)
@dataclass
class Refresh:
    """Bring the index at ``path`` up to date with the images under ``specs`` (``files`` and ``folders`` once
    found); ``named``: the path was given, not the default; ``engine`` local or ray."""

    specs: list[str]
    path: Path
    rebuild: bool = False
    wait_s: float = 60.0
    engine: str = "local"
    ray_address: str | None = None
    named: bool = False
    files: list[ImageSource] | None = None
    folders: list[Path] | None = None
    tier_from: int | None = None  # kept in the index: the rows from which it has an approximate tier (0: never)

    def __post_init__(self):
        count("tier-from", self.tier_from, least=0, optional=True)
        if not (self.specs or self.files or self.folders):
            raise UsageError("bt index needs images or folders to index", "e.g. bt index ~/Pictures")
        one_of("engine", self.engine, ("local", "ray"))
        seconds("wait", self.wait_s)

    def cost(self) -> Cost:
        return Cost(images=len(self.specs) + len(self.files or ()))


@operation("evaluate", EvalRecord, "eval", "/v1/eval", lambda q: q.heads(), "evaluation:run_evaluate", single=True)
@dataclass
class Evaluate:
    """Image-text retrieval recall on a caption set: ``images`` by path, their captions ``texts`` and each caption's
    image (``text_image``); ITM reranks each query's ``k_test`` most similar, unless ``itc_only``."""

    images: list[ImageSource]
    texts: list[str]
    text_image: list[int]
    k_test: int = 128
    itc_only: bool = False
    by_path = True  # (its images are read by path, wherever it runs)

    def __post_init__(self):
        texts_given(self.texts, "eval")
        images_given(self.images, "eval")
        count("k-test", self.k_test, most=10000)
        if any(image.path is None for image in self.images):
            raise UsageError("eval reads its images by path", "name image files")
        if len(self.text_image) != len(self.texts) or not all(
            isinstance(i, int) and 0 <= i < len(self.images) for i in self.text_image
        ):
            raise UsageError("each caption must name one of the images", "check the annotations")

    def heads(self):
        return ("itc",) if self.itc_only else ("itm",), ("itm", "itc")

    def cost(self) -> Cost:
        return Cost(len(self.images) * len(self.texts), images=len(self.images), texts=len(self.texts))


def _labels_and_templates(labels, templates, method, rerank_k) -> list[str]:
    """The templates (CLIP's seven when none are given), once labels, templates, method and shortlist are checked."""
    from ..tasks.labels import DEFAULT_TEMPLATES, check_labels, check_templates

    texts_given(labels, "classifying")
    check_labels(labels)
    if isinstance(templates, str) or not isinstance(templates, (list, tuple)):
        raise UsageError("templates are a list of strings", 'e.g. ["a photo of a {}."]')
    one_of("method", method, CLASSIFY_METHODS)
    count("rerank-k", rerank_k)
    return list(check_templates(list(templates))) or list(DEFAULT_TEMPLATES)


@operation("classify", LabelRecord, "classify", "/v1/classify", lambda q: classify_heads(q.method), "classify:classify")
@dataclass
class Classify:
    """Each image's ``top_k`` most probable ``labels`` by ``method`` (prompt-ensembled ITC, ITM, an ITC shortlist of
    ``rerank_k`` reranked by ITM, or auto), each label in every template (CLIP's seven when none are given)."""

    images: list[ImageSource]
    labels: list[str]
    templates: list[str] = field(default_factory=list)
    method: str = "auto"
    top_k: int = 5
    rerank_k: int = 10

    def __post_init__(self):
        images_given(self.images, "classify")
        self.templates = _labels_and_templates(self.labels, self.templates, self.method, self.rerank_k)
        count("top-k", self.top_k)

    def cost(self) -> Cost:
        return _classification_cost(self.images, self.labels, self.templates, self.method)


@operation(
    "evaluate_classification",
    ClassificationEvalRecord,
    "eval",
    "/v1/eval/classification",
    lambda q: classify_heads(q.method),
    "classify:run_evaluation",
    single=True,
)
@dataclass
class EvaluateClassification:
    """Zero-shot accuracy on labelled images: each image's class (``targets``, indexes into ``classes``)."""

    images: list[ImageSource]
    targets: list[int]
    classes: list[str]
    templates: list[str] = field(default_factory=list)
    method: str = "auto"
    rerank_k: int = 10
    by_path = True  # (its images are read by path, wherever it runs)

    def __post_init__(self):
        images_given(self.images, "eval")
        self.templates = _labels_and_templates(self.classes, self.templates, self.method, self.rerank_k)
        if any(image.path is None for image in self.images):
            raise UsageError("eval reads its images by path", "name image files")
        if len(self.targets) != len(self.images) or not all(
            isinstance(t, int) and 0 <= t < len(self.classes) for t in self.targets
        ):
            raise UsageError("each image must name one of the classes", "check the labelled folder")

    def cost(self) -> Cost:
        return _classification_cost(self.images, self.classes, self.templates, self.method)


def _classification_cost(images, labels, templates, method) -> Cost:
    prompts = len(labels) * len(templates)
    pairs = len(images) * prompts if method in ("itm", "auto") else 0
    characters = len(templates) * sum(map(len, labels)) + len(labels) * sum(map(len, templates))
    return Cost(pairs, images=len(images), texts=len(labels), prompts=prompts, prompt_characters=characters)


@operation("explain", ExplainRecord, "explain", "/v1/explain", lambda q: (("itm",), ()), "explain:run_explain")
@dataclass
class Explain:
    """Grad-CAM maps of every image x text pair over the cross-attention of fusion layer ``layer`` (default: the
    middle one)."""

    images: list[ImageSource]
    texts: list[str]
    layer: int | None = None

    def __post_init__(self):
        texts_given(self.texts, "explain")
        images_given(self.images, "explain")
        count("layer", self.layer, least=0, optional=True)

    def cost(self) -> Cost:
        return Cost(len(self.images) * len(self.texts), images=len(self.images), texts=len(self.texts))


@operation("check_index", IndexCheck, "index", "/v1/index/check", lambda q: q.heads(), "maintenance:check_index",
           single=True, uses_model=lambda q: q.repair)  # fmt: skip
@dataclass
class CheckIndex:
    """Verify every row of the index at ``index`` against its checksum; with ``repair``, embed again exactly the
    damaged rows (with the model the index was built with)."""

    index: Path | None = None  # (None: the default index)
    repair: bool = False
    wait_s: float = 60.0
    named: bool = False  # whether ``index`` was given, not the default (a server's: one of its indexes by name)

    def __post_init__(self):
        if not isinstance(self.repair, bool):
            raise UsageError(f"repair is true or false, not {self.repair!r}", "e.g. repair=True")
        seconds("wait", self.wait_s)

    def heads(self):
        return ("itc",) if self.repair else (), ()

    def cost(self) -> Cost:
        return Cost()
