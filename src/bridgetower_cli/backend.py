"""The one interface the commands (and the Python API) call: the work done in this process (``Local``) or by a bt
server (``Remote``), chosen once by ``open_backend``. Either way the records, their order, the skips and the
messages are the same, so what the user sees does not depend on where the work ran."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import BtError
from .model.catalog import retrieval_heads
from .records import (
    EmbeddingRecord,
    EvalRecord,
    ExplainRecord,
    FillMaskRecord,
    RefreshStats,
    Reporter,
    RetrievalRecord,
    ScoreRecord,
)
from .sources import ImageSource, expand_image_sources


@dataclass(frozen=True)
class ModelOptions:
    """The options every model command takes: which checkpoint, where and how it runs."""

    model: str
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    batch_size: int | None = None


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

    def explain(self, sources, texts, outcome, reporter, layer=None) -> Iterator[tuple[ExplainRecord, object]]:
        """(record, the RGB image the model saw) per pair."""
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        """The short side the checkpoint's processor resizes to (pictures map their grids onto it)."""
        raise NotImplementedError


class Local(Backend):
    """The work in this process: the checkpoint loaded on first use (resolved first, fast and without torch)."""

    def __init__(self, options: ModelOptions):
        super().__init__(options)
        self._runtime = None

    def runtime(self, reporter: Reporter, needs: tuple[str, ...], preferred: tuple[str, ...] = ()):
        """(the runtime, the batch size), loading the checkpoint the first time; a head in ``needs`` it lacks is
        refused, naming a public checkpoint with ``needs`` and ``preferred``."""
        if self._runtime is None:
            from .model.hub import resolve_checkpoint

            o = self.options
            path = resolve_checkpoint(o.model, o.revision)
            with reporter.status(f"loading {o.model} ..."):
                from .model.loading import load_model
                from .model.runtime import Runtime

                self._runtime = Runtime(load_model(path, o.model, o.device, o.dtype, needs, preferred, o.threads))
            # The millions of objects torch and transformers made live as long as the process: out of the
            # collector's sight, so walking a 100,000-file folder does not pay for scanning them again and again.
            gc.freeze()
        else:
            from .model.loading import require_heads

            require_heads(self._runtime.loaded.heads, needs, self.options.model, preferred)
        return self._runtime, self.options.batch_size or self._runtime.default_batch_size

    def score(self, sources, texts, outcome, reporter, top_k=None) -> Iterator[ScoreRecord]:
        runtime, batch = self.runtime(reporter, ("itm",))
        from .tasks import pairs

        return pairs.score(runtime, sources, texts, outcome, batch, top_k, reporter)

    def fill_mask(self, sources, texts, outcome, reporter, top_k=5, targets=None) -> Iterator[FillMaskRecord]:
        runtime, batch = self.runtime(reporter, ("mlm",))
        from .tasks import pairs

        return pairs.fill_mask(runtime, sources, texts, outcome, batch, top_k, targets, reporter)

    def embed(self, kinds, sources, texts, outcome, reporter) -> Iterator[EmbeddingRecord]:
        runtime, batch = self.runtime(reporter, ("itc",))
        from .tasks import pairs

        return (r for kind in kinds for r in pairs.embed(runtime, kind, outcome, sources, texts, batch, reporter))

    def retrieve_texts(self, image, texts, outcome, reporter, top_k=10, rerank_k=5) -> list[RetrievalRecord]:
        runtime, batch = self.runtime(reporter, *retrieval_heads(rerank_k))
        from .tasks import retrieve as retrieval

        return retrieval.retrieve_texts(runtime, image, texts, top_k, rerank_k, batch, reporter)

    def retrieve_images(self, query: ImageQuery, outcome, reporter) -> list[RetrievalRecord]:
        folders = [Path(spec).expanduser() for spec in query.specs if Path(spec).expanduser().is_dir()]
        if query.refresh:  # every image under the specs, to refresh the index with
            sources = indexable(query.specs)
        else:  # no walk: the files named, and what the index holds under the folders named (all of it if none)
            files = [spec for spec in query.specs if not Path(spec).expanduser().is_dir()]
            sources = expand_image_sources(files) if files else []
            folders = folders or ([] if files else [Path(os.sep)])
        rerank_k = 0 if isinstance(query.query, ImageSource) else query.rerank_k
        needs = ("itc",) if isinstance(query.query, ImageSource) else retrieval_heads(rerank_k)[0]
        runtime, batch = self.runtime(reporter, needs, retrieval_heads(rerank_k)[1])
        from .tasks import retrieve as retrieval  # (torch: only once the checkpoint is known to be one)

        q = query
        return retrieval.retrieve_images(
            runtime, q.query, sources, outcome, folders, q.index, q.rebuild, q.top_k, rerank_k, batch, reporter,
            refresh=q.refresh, wait_s=q.wait_s,
        )  # fmt: skip

    def index(self, request: IndexRequest, outcome, reporter) -> RefreshStats:
        """Bring the index up to date with the model in this process, or on Ray (this process only writes the
        index)."""
        from .index.store import EmbeddingIndex
        from .tasks import indexing

        o, r = self.options, request
        if r.engine == "ray":
            from .engines.ray import RayEngine
            from .model.hub import fingerprint, resolve_checkpoint

            checkpoint = resolve_checkpoint(o.model, o.revision)
            ray = RayEngine.for_checkpoint(checkpoint, o.model, o.device, o.dtype, r.ray_address)
            runtime, batch = None, o.batch_size or 8
            opened = EmbeddingIndex.for_writing(
                r.path, fingerprint(checkpoint), ray.dim, r.rebuild, o.model, wait_s=r.wait_s
            )
        else:
            ray = None
            runtime, batch = self.runtime(reporter, ("itc",))
            opened = indexing.open_index(runtime, r.path, r.rebuild, wait_s=r.wait_s)
        with opened:
            stats = indexing.refresh_index(runtime, opened, r.sources, outcome, r.folders, batch, reporter, engine=ray)
            reporter.info(f"{stats.line()}; {opened.count()} images in {opened.path}")
        return stats

    def evaluate(self, caption_set, k_test: int, itc_only: bool, outcome, reporter) -> EvalRecord:
        runtime, batch = self.runtime(reporter, ("itc",) if itc_only else ("itm",), ("itm", "itc"))
        from .tasks.evaluation import evaluate

        return evaluate(runtime, caption_set, outcome, k_test, itc_only, batch, reporter)

    def explain(self, sources, texts, outcome, reporter, layer=None) -> Iterator[tuple[ExplainRecord, object]]:
        runtime, batch = self.runtime(reporter, ("itm",))
        from .tasks.explain import explain

        return explain(runtime, sources, texts, outcome, layer, batch, reporter)

    @property
    def image_size(self) -> int:
        return self._runtime.image_size


def indexable(specs: list[str]) -> list[ImageSource]:
    """The local image files under ``specs`` (no URLs: an index holds files)."""
    sources = expand_image_sources(specs)
    urls = [s.name for s in sources if s.is_url]
    if urls:
        raise BtError(f"URLs cannot be indexed: {urls[0]}", "download the images and pass the folder")
    return sources


class Remote(Backend):
    """The work on a bt server: images go as bytes, records come back in the CLI's own shapes and are given the
    names the CLI would give them (the paths as typed, this side's model name)."""

    def __init__(self, options: ModelOptions, client):
        super().__init__(options)
        self.client = client

    def score(self, sources, texts, outcome, reporter, top_k=None) -> list[ScoreRecord]:
        from . import client

        return client.score(self.client, self.options.model, sources, texts, top_k, outcome, reporter)

    def fill_mask(self, sources, texts, outcome, reporter, top_k=5, targets=None) -> list[FillMaskRecord]:
        from . import client

        return client.fill_mask(self.client, self.options.model, sources, texts, top_k, targets, outcome, reporter)

    def embed(self, kinds, sources, texts, outcome, reporter) -> Iterator[EmbeddingRecord]:
        from . import client

        for kind in kinds:
            for record in client.embed(self.client, self.options.model, kind, sources, texts, outcome, reporter):
                yield replace(record, model=self.options.model)

    def retrieve_texts(self, image, texts, outcome, reporter, top_k=10, rerank_k=5) -> list[RetrievalRecord]:
        from . import client

        payload = {"texts": texts, "top_k": top_k, "rerank_k": rerank_k}
        return client.retrieve(self.client, self.options.model, payload, outcome, reporter, image=image)

    def retrieve_images(self, query: ImageQuery, outcome, reporter) -> list[RetrievalRecord]:
        """The images and the index live with the server (under its --allow-path roots, its --index-dir)."""
        from . import client

        if isinstance(query.query, ImageSource):
            raise BtError("an image query (--like) is not served yet", "run it without --server")
        shown = {os.path.abspath(os.path.expanduser(spec)): spec for spec in query.specs}
        payload = {
            "query": query.query,
            "sources": list(shown),
            "index": server_index_name(query.index),
            "rebuild": query.rebuild,
            "refresh": query.refresh,
            "top_k": query.top_k,
            "rerank_k": query.rerank_k,
        }
        records = client.retrieve(self.client, self.options.model, payload, outcome, reporter)
        return [replace(r, image=as_typed(r.image, shown)) for r in records]


def as_typed(path: str | None, shown: dict[str, str]) -> str | None:
    """A server's absolute path named as the CLI's own walk names it: the spec as typed, then the rest."""
    if path is None:
        return None
    for absolute, spec in shown.items():
        if path == absolute:
            return spec
        prefix = os.path.join(absolute, "")
        if path.startswith(prefix):
            return os.path.join(spec, path[len(prefix) :])
    return path


def server_index_name(index: Path | None) -> str | None:
    """With --server, --index names one of the server's own indexes: a plain name, never a path."""
    if index is None:
        return None
    if len(Path(index).parts) != 1 or Path(index).suffix == ".sqlite":
        raise BtError(
            f"with --server, --index names one of the server's indexes, not a file ({index})",
            "pass a plain name, e.g. --index photos",
        )
    return str(index)


def open_backend(
    options: ModelOptions, server: str | None = None, api_key: str | None = None, timeout: float | None = None
) -> Backend:
    """The backend for a command: a bt server at ``server``, else this process. (Nothing loads until used.)"""
    if server:
        from .client import Client

        return Remote(options, Client(server, api_key, timeout))
    return Local(options)
