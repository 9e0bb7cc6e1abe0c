"""What every backend shares: the options of a model command, what `bt retrieve` and `bt index` ask, the interface
itself, and the images a search or an index refresh covers (found on the caller's side, wherever the work runs)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BtError
from ..records import (
    EmbeddingRecord,
    EvalRecord,
    ExplainRecord,
    FillMaskRecord,
    RefreshStats,
    RetrievalRecord,
    ScoreRecord,
)
from ..sources import ImageSource, expand_image_sources


@dataclass(frozen=True)
class ModelOptions:
    """The options every model command takes: which checkpoint, where and how it runs."""

    model: str
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    batch_size: int | None = None
    fast_decode: bool = False  # JPEGs read at a reduced scale (images.decode_image)


@dataclass
class ImageQuery:
    """What `bt retrieve` asks of images: a text or an image as the query, where to look (files, folders, globs as
    given; none with ``refresh`` off: the whole index), which index, and how to rank."""

    query: str | ImageSource
    specs: list[str] = field(default_factory=list)
    index: Path | None = None
    rebuild: bool = False
    refresh: bool = True
    top_k: int = 10
    rerank_k: int = 5
    wait_s: float = 60.0


@dataclass
class IndexRequest:
    """What `bt index` asks: the image files (and the folders they were walked from) to bring the index at ``path``
    up to date with, and how."""

    sources: list[ImageSource]
    folders: list[Path]
    path: Path
    rebuild: bool = False
    wait_s: float = 60.0
    engine: str = "local"  # or "ray"
    ray_address: str | None = None
    specs: list[str] = field(default_factory=list)  # as given (a server walks them under its roots)
    named: bool = False  # whether ``path`` was given (--index), not the default


class Backend:
    """Where the work runs. Every method reports skips into ``outcome`` and messages to ``reporter``."""

    def __init__(self, options: ModelOptions):
        self.options = options

    def score(self, sources, texts, outcome, reporter, top_k=None) -> Iterable[ScoreRecord]:
        raise NotImplementedError

    def fill_mask(self, sources, texts, outcome, reporter, top_k=5, targets=None) -> Iterable[FillMaskRecord]:
        raise NotImplementedError

    def embed(self, kinds, sources, texts, outcome, reporter) -> Iterable[EmbeddingRecord]:
        raise NotImplementedError

    def retrieve_texts(self, image, texts, outcome, reporter, top_k=10, rerank_k=5) -> list[RetrievalRecord]:
        raise NotImplementedError

    def retrieve_images(self, query: ImageQuery, outcome, reporter) -> list[RetrievalRecord]:
        raise NotImplementedError

    def index(self, request: IndexRequest, outcome, reporter) -> RefreshStats:
        raise NotImplementedError

    def evaluate(self, caption_set, k_test: int, itc_only: bool, outcome, reporter) -> EvalRecord:
        raise NotImplementedError

    def classify(self, sources, labels, templates, outcome, reporter, method="auto", top_k=5, rerank_k=10) -> Iterable:
        """Per image, its ``top_k`` labels (``LabelRecord``), the most probable first."""
        raise NotImplementedError

    def evaluate_classification(self, folder, templates, outcome, reporter, method="auto", rerank_k=10) -> tuple:
        """(``ClassificationEvalRecord``, the confusion matrix [true][predicted]) on a ``LabelledFolder``."""
        raise NotImplementedError

    def explain(self, sources, texts, outcome, reporter, layer=None) -> Iterator[tuple[ExplainRecord, object]]:
        """(record, the RGB image the model saw) per pair."""
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        """The short side the checkpoint's processor resizes to (pictures map their grids onto it)."""
        raise NotImplementedError

    def in_process(self) -> Backend:
        """This backend's model in this process (what only runs here: an index's repair)."""
        raise NotImplementedError


def indexable(specs: list[str]) -> list[ImageSource]:
    """The local image files under ``specs`` (no URLs: an index holds files)."""
    sources = expand_image_sources(specs)
    urls = [s.name for s in sources if s.is_url]
    if urls:
        raise BtError(f"URLs cannot be indexed: {urls[0]}", "download the images and pass the folder")
    return sources


def searched(query: ImageQuery) -> tuple[list[ImageSource], list[Path]]:
    """The images a search refreshes the index with (every image under the specs), and the folders that scope it;
    with refresh off, no walk: the files named, and what the index holds under the folders named (all if none)."""
    folders = [Path(spec).expanduser() for spec in query.specs if Path(spec).expanduser().is_dir()]
    if query.refresh:
        return indexable(query.specs), folders
    files = [spec for spec in query.specs if not Path(spec).expanduser().is_dir()]
    sources = expand_image_sources(files) if files else []
    return sources, folders or ([] if files else [Path(os.sep)])
