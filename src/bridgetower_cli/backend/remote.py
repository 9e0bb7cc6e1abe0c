"""The work on a bt server (``Remote``), and on the automatic one, started on first use (``Auto``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from ..errors import BtError
from ..records import (
    ClassificationEvalRecord,
    EmbeddingRecord,
    EvalRecord,
    ExplainRecord,
    FillMaskRecord,
    LabelRecord,
    RefreshStats,
    RetrievalRecord,
    ScoreRecord,
)
from ..sources import ImageSource
from .base import Backend, ImageQuery, IndexRequest, ModelOptions, searched
from .local import Local


class Remote(Backend):
    """The work on a bt server: records come back in the CLI's own shapes, with the names the CLI would give them
    (the paths as typed, this side's model name). One's own server (the automatic one) reads the files by path, as
    bt in process; another gets image bytes, and paths only under its --allow-path roots."""

    def __init__(self, options: ModelOptions, client):
        super().__init__(options)
        self.client = client

    def _model(self) -> dict:
        """The model as the request names it: one's own server gets the checkpoint folder resolved here (so that
        a missing model or revision is said as in process), and the name records carry."""
        if not self.client.own:
            return {"model": self.options.model}
        from ..model.hub import resolve_checkpoint

        folder = os.path.abspath(resolve_checkpoint(self.options.model, self.options.revision))
        return {"model": folder, "model_name": self.options.model}

    def _records(self, path: str, payload: dict, outcome, reporter, make) -> Iterator:
        for record in self.client.stream(path, {**self._model(), **payload}, outcome, reporter):
            yield make(record)

    def _images(self, sources, outcome, reporter) -> list[dict]:
        from ..client import sent_images

        return sent_images(self.client, sources, outcome, reporter)

    def score(self, sources, texts, outcome, reporter, top_k=None) -> Iterator[ScoreRecord]:
        payload = {"images": self._images(sources, outcome, reporter), "texts": texts, "top_k": top_k}
        return self._records("/v1/score", payload, outcome, reporter, lambda r: ScoreRecord(**r))

    def fill_mask(self, sources, texts, outcome, reporter, top_k=5, targets=None) -> Iterator[FillMaskRecord]:
        images = self._images(sources, outcome, reporter)
        payload = {"images": images, "texts": texts, "top_k": top_k, "targets": targets}
        return self._records("/v1/fill-mask", payload, outcome, reporter, FillMaskRecord.from_dict)

    def embed(self, kinds, sources, texts, outcome, reporter) -> Iterator[EmbeddingRecord]:
        for kind in kinds:
            images = self._images(sources, outcome, reporter) if kind != "text" else []
            payload = {"kind": kind, "images": images, "texts": texts if kind != "image" else []}
            named = lambda r: EmbeddingRecord(**{**r, "model": self.options.model})  # noqa: E731
            yield from self._records("/v1/embed", payload, outcome, reporter, named)

    def retrieve_texts(self, image, texts, outcome, reporter, top_k=10, rerank_k=5) -> list[RetrievalRecord]:
        (sent,) = self._images([image], outcome, reporter) or [None]
        if sent is None:
            raise BtError(f"cannot use {image.name}: {outcome.skipped[-1].reason}", "check the image")
        payload = {"image": sent, "texts": texts, "top_k": top_k, "rerank_k": rerank_k}
        return list(self._records("/v1/retrieve", payload, outcome, reporter, lambda r: RetrievalRecord(**r)))

    def retrieve_images(self, query: ImageQuery, outcome, reporter) -> list[RetrievalRecord]:
        """One's own server: the files and folders found here, the index file; another: the specs (found there,
        under its --allow-path roots) and one of its indexes by name."""
        q, shown = query, {}
        payload = {"rebuild": q.rebuild, "refresh": q.refresh, "top_k": q.top_k, "rerank_k": q.rerank_k}
        if isinstance(q.query, ImageSource):
            (payload["like"],) = self._images([q.query], outcome, reporter) or [None]
            if payload["like"] is None:
                raise BtError(f"cannot use {q.query.name}: {outcome.skipped[-1].reason}", "check the image")
        else:
            payload["query"] = q.query
        if self.client.own:  # (folders absolute there, and named as typed here)
            sources, folders = searched(q)
            shown = {os.path.abspath(folder): str(folder) for folder in folders}
            payload |= {"files": self._images(sources, outcome, reporter), "folders": list(shown)}
            payload |= {"index": os.path.abspath(q.index or _default_index()), "wait_s": q.wait_s}
        else:
            shown = {os.path.abspath(os.path.expanduser(spec)): spec for spec in q.specs}
            payload |= {"sources": list(shown), "index": server_index_name(q.index), "wait_s": q.wait_s}
        records = self._records("/v1/retrieve", payload, outcome, reporter, lambda r: RetrievalRecord(**r))
        return [replace(r, image=as_typed(r.image, shown)) for r in records]

    def index(self, request: IndexRequest, outcome, reporter) -> RefreshStats:
        r = request
        if r.engine == "ray":
            raise BtError("--engine ray runs in this process", "drop --server (or BT_SERVER) for it")
        payload = {"rebuild": r.rebuild, "wait_s": r.wait_s}
        if self.client.own:
            folders = [os.path.abspath(folder) for folder in r.folders]
            payload |= {"files": self._images(r.sources, outcome, reporter), "folders": folders}
            payload["index"] = os.path.abspath(r.path)
        else:
            payload |= {"sources": [os.path.abspath(os.path.expanduser(s)) for s in r.specs]}
            payload["index"] = server_index_name(r.path if r.named else None)
        (stats,) = self._records("/v1/index", payload, outcome, reporter, lambda r: RefreshStats(**r))
        return stats

    def evaluate(self, caption_set, k_test: int, itc_only: bool, outcome, reporter) -> EvalRecord:
        images = [{"name": source.name, "path": source.path} for source in caption_set.sources()]
        payload = {"images": images, "texts": caption_set.texts, "text_image": caption_set.text_image}
        payload |= {"k_test": k_test, "itc_only": itc_only}
        (record,) = self._records("/v1/eval", payload, outcome, reporter, lambda r: EvalRecord(**r))
        return record

    def classify(self, sources, labels, templates, outcome, reporter, method="auto", top_k=5, rerank_k=10):
        payload = {"images": self._images(sources, outcome, reporter), "labels": labels, "templates": templates}
        payload |= {"method": method, "top_k": top_k, "rerank_k": rerank_k}
        return self._records("/v1/classify", payload, outcome, reporter, lambda r: LabelRecord(**r))

    def evaluate_classification(self, folder, templates, outcome, reporter, method="auto", rerank_k=10):
        """The folder's images by path (one's own server; another's, under its --allow-path roots)."""
        images = [{"name": source.name, "path": source.path} for source in folder.sources]
        payload = {"images": images, "targets": folder.targets, "classes": folder.classes, "templates": templates}
        payload |= {"method": method, "rerank_k": rerank_k}
        path = "/v1/eval/classification"
        (record,) = self._records(path, payload, outcome, reporter, lambda r: ClassificationEvalRecord(**r))
        return record, self.client.meta["confusion"]

    def explain(self, sources, texts, outcome, reporter, layer=None) -> Iterator[tuple[ExplainRecord, object]]:
        """The maps from the server; the image each was drawn on decoded here, as the model saw it."""
        from ..images import decode_image, fit_aspect
        from ..reading import read_bytes

        by_name = {source.name: source for source in sources}
        payload = {"images": self._images(sources, outcome, reporter), "texts": texts, "layer": layer}
        seen: dict = {}
        for record in self._records("/v1/explain", payload, outcome, reporter, ExplainRecord.from_dict):
            if record.image not in seen:
                seen.clear()
                data = read_bytes(by_name[record.image])
                seen[record.image] = fit_aspect(decode_image(data), self.image_size)[0]
            yield record, seen[record.image]

    @property
    def image_size(self) -> int:
        return self.client.meta["image_size"]

    def in_process(self) -> Local:
        return Local(self.options)


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


def _default_index() -> Path:
    from ..index.files import default_index_path

    return default_index_path()


class Auto:
    """``--server auto``: the automatic server (``autoserver``), started or reached on first use, so that a call that
    stops early (a usage error, --stats) starts nothing; in process, with a warning, if it cannot start."""

    def __init__(self, options: ModelOptions, timeout: float | None, warn):
        self.options, self.timeout, self.warn = options, timeout, warn
        self._chosen: Backend | None = None

    def _backend(self) -> Backend:
        if self._chosen is None:
            from .. import autoserver

            o = self.options
            keep_alive = os.environ.get("BT_KEEP_ALIVE") or autoserver.DEFAULT_KEEP_ALIVE
            wanted = autoserver.ServerOptions(o.device, o.dtype, o.threads, o.batch_size, keep_alive, o.fast_decode)
            try:
                self._chosen = Remote(o, autoserver.connect(wanted, self.timeout))
            except autoserver.AutoServerFailed as failure:
                self.warn(f"{failure.message}; running in this process")
                self._chosen = Local(o)
        return self._chosen

    def __getattr__(self, name: str):
        return getattr(self._backend(), name)

    def in_process(self) -> Local:
        return Local(self.options)
