"""The records the library returns and the reporter it talks to (no torch here: the CLI imports it at start).

Every record is a dataclass whose ``to_dict()`` is the JSON object the CLI prints for it, key for key."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field


class Record:
    """A result: ``to_dict()`` is what ``-f json`` prints for it (fields that do not apply, None, left out)."""

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, data: dict):
        """The record ``to_dict`` gave (as a server sends it)."""
        return cls(**data)


@dataclass
class ScoreRecord(Record):
    """One (image, text) pair scored by the ITM head."""

    image: str
    text: str
    logit: float
    probability: float


@dataclass
class Skipped(Record):
    """An input left out of a batch, and why."""

    name: str
    reason: str


@dataclass
class Outcome:
    """The inputs a task had to skip."""

    skipped: list[Skipped] = field(default_factory=list)

    def skip(self, name: str, reason: str, reporter: Reporter) -> None:
        """Leave one input out: recorded here, reported as it happens."""
        self.skipped.append(Skipped(name, reason))
        reporter.skipped(name, reason)


class Reporter:
    """Where a task reports progress and problems. The base class is silent; the CLI's prints to stderr."""

    def warn(self, message: str, kind: str | None = None) -> None:
        """A warning; ``kind`` names warnings that may repeat many times (a reporter may summarise them)."""

    def skipped(self, name: str, reason: str) -> None:
        """An input left out of batch work, and why."""

    def info(self, message: str) -> None:
        """A note for the user (never data)."""

    @contextlib.contextmanager
    def progress(self, total: int, description: str) -> Iterator[Callable[[int], None]]:
        """Long work: yields the function that advances it by n items."""
        yield lambda n=1: None

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[None]:
        """Work of unknown length (loading a model)."""
        yield

    def meta(self, **values) -> None:
        """Facts beside the records (the short side explain's images are resized to, a confusion matrix)."""
        self.facts.update(values)

    @property
    def facts(self) -> dict:
        return self.__dict__.setdefault("_facts", {})


@dataclass
class Candidate(Record):
    """One candidate token for a mask, as the transformers fill-mask pipeline reports it."""

    token: int
    token_str: str
    score: float


@dataclass
class FillMaskRecord(Record):
    """One (image, text) pair: the text with every mask filled, and the top candidates per mask, in order."""

    image: str
    text: str
    sequence: str
    masks: list[list[Candidate]]

    @classmethod
    def from_dict(cls, data: dict) -> FillMaskRecord:
        masks = [[Candidate(**candidate) for candidate in mask] for mask in data["masks"]]
        return cls(data["image"], data["text"], data["sequence"], masks)


@dataclass
class EmbeddingRecord(Record):
    """One L2-normalised ITC embedding: of an image, a text, or an (image, text) pair (kind "cross")."""

    image: str | None
    text: str | None
    kind: str
    model: str
    dim: int
    embedding: list[float]


@dataclass
class EmbeddingsWritten(Record):
    """What ``bt embed --output`` wrote."""

    output: str
    count: int
    dim: int
    model: str


@dataclass
class RetrievalRecord(Record):
    """One hit: an image for a text query, or a text for an image query. ``logit`` and ``probability`` (ITM) are
    set for the hits the cross-encoder reranked; ``similarity`` (ITC cosine) when the checkpoint has ITC heads."""

    rank: int
    image: str | None
    text: str | None
    similarity: float | None
    logit: float | None = None
    probability: float | None = None


@dataclass
class ModelRecord(Record):
    """A public checkpoint bt knows, whether it is already in the local Hugging Face cache, and the commands that use
    it when no ``--model`` is given."""

    id: str
    heads: list[str]
    image_size: int
    cached: bool
    default_for: list[str]


@dataclass
class LabelRecord(Record):
    """One of an image's most probable labels (``bt classify``): the softmax over the labels of their scores (ITC:
    ``logit_scale.exp()`` x cosine; ITM: the match logit, each averaged over the prompt templates)."""

    image: str
    label: str
    probability: float
    score: float


@dataclass
class ClassificationEvalRecord(Record):
    """Zero-shot classification accuracy on a labelled folder, in percent, by CLIP_benchmark's names: top-1 and
    top-5 accuracy and the mean of the classes' recalls; each class's recall; what was evaluated, how, how long."""

    acc1: float
    acc5: float
    mean_per_class_recall: float
    images: int
    classes: int
    method: str
    templates: int
    per_class_recall: dict[str, float]
    seconds: float


@dataclass
class EvalRecord(Record):
    """Image-text retrieval recall (percent, LAVIS names): text retrieval (txt_, per image) and image retrieval
    (img_, per caption) at 1, 5 and 10, their means; what was evaluated, how, and in how long."""

    txt_r1: float
    txt_r5: float
    txt_r10: float
    txt_r_mean: float
    img_r1: float
    img_r5: float
    img_r10: float
    img_r_mean: float
    r_mean: float
    images: int
    texts: int
    k_test: int
    protocol: str
    pairs_scored: int
    model: str
    seconds: float


@dataclass
class TokenMap(Record):
    """One text token and its Grad-CAM on the patch grid (``picture``: its map drawn small, from a server)."""

    token: str
    grid: list[list[float]]
    picture: str | None = None


@dataclass
class ExplainRecord(Record):
    """Where the model looks for a text in an image: the Grad-CAM of the ITM match logit over the cross-attention of
    fusion ``layer``, raw (before normalisation), on the patch grid: the text's (mean over its tokens) and each
    token's. ``picture`` is the overlay PNG written, if any."""

    image: str
    text: str
    layer: int
    probability: float
    grid: list[list[float]]
    tokens: list[TokenMap]
    picture: str | None = None

    @classmethod
    def from_dict(cls, data: dict) -> ExplainRecord:
        return cls(**{**data, "tokens": [TokenMap(**token) for token in data["tokens"]]})


@dataclass
class RefreshStats(Record):
    """What a refresh of the index did."""

    new: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    reused: int = 0  # new or changed files whose embedding came from an indexed file with the same content
    elsewhere: int = 0  # files another bt process was embedding: left to it
    skipped: int = 0  # files gone or unusable before they could be read (a dangling link, one that vanished)
    # new + changed + unchanged + failed + elsewhere + skipped = the files seen; removed: rows of files seen gone

    def line(self) -> str:
        extra = (
            (f", {self.reused} reused" if self.reused else "")
            + (f", {self.failed} unreadable" if self.failed else "")
            + (f", {self.skipped} skipped" if self.skipped else "")
            + (f", {self.elsewhere} being indexed by another bt process" if self.elsewhere else "")
        )
        return (
            f"index: {self.new} new, {self.changed} changed, {self.removed} removed, {self.unchanged} unchanged{extra}"
        )


@dataclass
class IndexStats(Record):
    """What ``bt index --stats`` reports."""

    index: str
    model: str
    fingerprint: str
    dim: int
    images: int
    unreadable: int
    stale: int  # rows kept though their folder could not be read at the last refresh of it
    sqlite_bytes: int
    vector_bytes: int
    vector_rows: int
    last_refresh: str | None
    tier: str | None = None  # the approximate tier (the faiss index it is), if the index has one
    tier_rows: int = 0  # the rows it covers (those added since are searched exactly beside it)
    tier_bytes: int = 0
    tier_build_s: float | None = None
    tier_recall: float | None = None  # recall@10 of held-out queries against exact search, at its build
    tier_candidates: int = 0  # rescored exactly per query (per 10 hits), the fewest that reached the recall wanted
    tier_used: bool = False  # its recall was enough to search with (else every search is exact)
    tier_from: int = 0  # the rows from which the index has a tier (0: never)


@dataclass
class IndexCheck(Record):
    """What ``bt index --check`` found: rows whose vector is missing, out of range, non-finite, not of unit length
    or not matching its checksum (``damaged_paths``: what ``--repair`` embeds again)."""

    index: str
    images: int
    damaged: int
    vector_file: str
    catalog: str
    damaged_paths: list[str]
    # What mends it: none, re-embed (the damaged rows), new vector file, float16 copy, tier, rebuild.
    repair: str = "none"

    @property
    def sound(self) -> bool:
        return self.damaged == 0 and self.vector_file == "ok" and self.catalog == "ok"
