"""The work in this process."""

from __future__ import annotations

import gc
from collections.abc import Iterator

from ..model.catalog import classify_heads, retrieval_heads
from ..records import (
    EmbeddingRecord,
    EvalRecord,
    ExplainRecord,
    FillMaskRecord,
    RefreshStats,
    Reporter,
    RetrievalRecord,
    ScoreRecord,
)
from ..sources import ImageSource
from .base import Backend, ImageQuery, IndexRequest, ModelOptions, searched


class Local(Backend):
    """The work in this process: the checkpoint loaded on first use (resolved first, fast and without torch)."""

    def __init__(self, options: ModelOptions):
        super().__init__(options)
        self._runtime = None

    def runtime(self, reporter: Reporter, needs: tuple[str, ...], preferred: tuple[str, ...] = ()):
        """(the runtime, the batch size), loading the checkpoint the first time; a head in ``needs`` it lacks is
        refused, naming a public checkpoint with ``needs`` and ``preferred``."""
        if self._runtime is None:
            from ..model.hub import resolve_checkpoint

            o = self.options
            path = resolve_checkpoint(o.model, o.revision)
            with reporter.status(f"loading {o.model} ..."):
                from ..model import runtime_for
                from ..model.loading import load_model

                self._runtime = runtime_for(load_model(path, o.model, o.device, o.dtype, needs, preferred, o.threads))
                self._runtime.fast_decode = o.fast_decode
            # The millions of objects torch and transformers made live as long as the process: out of the
            # collector's sight, so walking a 100,000-file folder does not pay for scanning them again and again.
            gc.freeze()
        else:
            from ..model.loading import require_heads

            require_heads(self._runtime.loaded.heads, needs, self.options.model, preferred)
        return self._runtime, self.options.batch_size or self._runtime.default_batch_size

    def score(self, sources, texts, outcome, reporter, top_k=None) -> Iterator[ScoreRecord]:
        runtime, batch = self.runtime(reporter, ("itm",))
        from ..tasks import pairs

        return pairs.score(runtime, sources, texts, outcome, batch, top_k, reporter)

    def fill_mask(self, sources, texts, outcome, reporter, top_k=5, targets=None) -> Iterator[FillMaskRecord]:
        runtime, batch = self.runtime(reporter, ("mlm",))
        from ..tasks import pairs

        return pairs.fill_mask(runtime, sources, texts, outcome, batch, top_k, targets, reporter)

    def embed(self, kinds, sources, texts, outcome, reporter) -> Iterator[EmbeddingRecord]:
        runtime, batch = self.runtime(reporter, ("itc",))
        from ..tasks import pairs

        return (r for kind in kinds for r in pairs.embed(runtime, kind, outcome, sources, texts, batch, reporter))

    def retrieve_texts(self, image, texts, outcome, reporter, top_k=10, rerank_k=5) -> list[RetrievalRecord]:
        runtime, batch = self.runtime(reporter, *retrieval_heads(rerank_k))
        from ..tasks import retrieve as retrieval

        return retrieval.retrieve_texts(runtime, image, texts, top_k, rerank_k, batch, reporter)

    def retrieve_images(self, query: ImageQuery, outcome, reporter) -> list[RetrievalRecord]:
        sources, folders = searched(query)
        rerank_k = 0 if isinstance(query.query, ImageSource) else query.rerank_k
        needs = ("itc",) if isinstance(query.query, ImageSource) else retrieval_heads(rerank_k)[0]
        runtime, batch = self.runtime(reporter, needs, retrieval_heads(rerank_k)[1])
        from ..tasks import retrieve as retrieval  # (torch: only once the checkpoint is known to be one)

        q = query
        return retrieval.retrieve_images(
            runtime, q.query, sources, outcome, folders, q.index, q.rebuild, q.top_k, rerank_k, batch, reporter,
            refresh=q.refresh, wait_s=q.wait_s,
        )  # fmt: skip

    def index(self, request: IndexRequest, outcome, reporter) -> RefreshStats:
        """Bring the index up to date with the model in this process, or on Ray (this process only writes the
        index)."""
        from ..index.store import EmbeddingIndex
        from ..tasks import indexing

        o, r = self.options, request
        if r.engine != "ray":
            runtime, batch = self.runtime(reporter, ("itc",))
            opened = indexing.open_index(runtime, r.path, r.rebuild, wait_s=r.wait_s)
            return indexing.index_images(runtime, opened, r.sources, outcome, r.folders, batch, reporter)
        from ..engines.ray import RayEngine
        from ..model.hub import embedding_identity, resolve_checkpoint
        from ..model.loading import select_precision

        checkpoint = resolve_checkpoint(o.model, o.revision)
        ray = RayEngine.for_checkpoint(checkpoint, o.model, o.device, o.dtype, r.ray_address, o.fast_decode)
        identity, label = embedding_identity(checkpoint, o.model, select_precision(o.dtype)[0])
        opened = EmbeddingIndex.for_writing(r.path, identity, ray.dim, r.rebuild, label, wait_s=r.wait_s)
        batch = o.batch_size or 8
        return indexing.index_images(None, opened, r.sources, outcome, r.folders, batch, reporter, engine=ray)

    def evaluate(self, caption_set, k_test: int, itc_only: bool, outcome, reporter) -> EvalRecord:
        runtime, batch = self.runtime(reporter, ("itc",) if itc_only else ("itm",), ("itm", "itc"))
        from ..tasks.evaluation import evaluate

        return evaluate(runtime, caption_set, outcome, k_test, itc_only, batch, reporter)

    def classify(self, sources, labels, templates, outcome, reporter, method="auto", top_k=5, rerank_k=10):
        runtime, batch = self.runtime(reporter, *classify_heads(method))
        from ..tasks import classify

        return classify.classify(runtime, sources, labels, templates, outcome, method, top_k, rerank_k, batch, reporter)

    def evaluate_classification(self, folder, templates, outcome, reporter, method="auto", rerank_k=10):
        runtime, batch = self.runtime(reporter, *classify_heads(method))
        from ..tasks import classify

        return classify.evaluate_classification(runtime, folder, templates, outcome, method, rerank_k, batch, reporter)

    def explain(self, sources, texts, outcome, reporter, layer=None) -> Iterator[tuple[ExplainRecord, object]]:
        runtime, batch = self.runtime(reporter, ("itm",))
        from ..tasks.explain import explain

        return explain(runtime, sources, texts, outcome, layer, batch, reporter)

    @property
    def image_size(self) -> int:
        return self._runtime.image_size

    def in_process(self) -> Local:
        return self
