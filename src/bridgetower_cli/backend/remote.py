"""The work on a bt server (``Remote``), and on the automatic one, started on first use (``Auto``)."""

from __future__ import annotations

import os
from dataclasses import fields, replace
from pathlib import Path

from ..errors import BtError, Interrupted, UsageError
from ..operations import CheckIndex, RankTexts, Refresh, Search, operation_of
from ..records import EmbeddingRecord, RetrievalRecord
from ..sources import ImageSource
from .base import Backend, ModelOptions, located
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

    def _images(self, sources, outcome, reporter) -> list[dict]:
        from ..client import sent_images

        return sent_images(self.client, sources, outcome, reporter)

    def run(self, request, outcome, reporter):
        """The request sent to its operation's route: its fields as they are, images as the server takes them."""
        operation = operation_of(request)
        if isinstance(request, Refresh) and request.engine == "ray":
            raise BtError("--engine ray runs in this process", "drop --server (or BT_SERVER) for it")
        if isinstance(request, (Search, Refresh)):
            payload, shown = self._located(request, outcome, reporter)
        else:
            payload, shown = self._payload(request, outcome, reporter), {}
        if isinstance(request, CheckIndex):  # (one's own server: the file; another: one of its indexes by name)
            named = request.index if request.named else None
            payload["index"] = (
                os.path.abspath(request.index or _default_index(request))
                if self.client.own
                else (server_index_name(named))
            )
        if payload is None:  # (every image was left out here, each named)
            if operation.single:
                raise BtError("none of the images could be read", "see the warnings above")
            return iter(())
        streamed = self.client.stream(operation.route, {**self._model(), **payload}, outcome, reporter)
        records = (self._record(operation.record, record, shown) for record in streamed)
        if operation.single:
            try:
                (record,) = records
            except KeyboardInterrupt:  # said as in process: what the server committed, as far as it told
                counted = self.client.counted()
                if isinstance(request, Refresh) and counted is not None and counted[0] == Interrupted.INDEXING:
                    raise Interrupted.indexing(*counted[1:]) from None
                raise
            return record
        return records if not isinstance(request, (Search, RankTexts)) else list(records)

    def _payload(self, request, outcome, reporter) -> dict | None:
        """A request's fields by name: images as bytes (or, to one's own server and for evaluations, paths)."""
        payload = {}
        for f in fields(request):
            value = getattr(request, f.name)
            images = [value] if isinstance(value, ImageSource) else value
            if isinstance(images, list) and images and isinstance(images[0], ImageSource):
                if getattr(request, "by_path", False):
                    sent = [{"name": source.name, "path": source.path} for source in images]
                else:
                    sent = self._images(images, outcome, reporter)
                if not sent:
                    if isinstance(value, ImageSource):
                        raise BtError(f"cannot use {value.name}: {outcome.skipped[-1].reason}", "check the image")
                    return None
                value = sent[0] if isinstance(value, ImageSource) else sent
            payload[f.name] = str(value) if isinstance(value, Path) else value
        return payload

    def _located(self, q, outcome, reporter) -> tuple[dict, dict]:
        """A search or a refresh: one's own server gets the files and folders found here and the index file;
        another, the specs (found there, under its --allow-path roots) and one of its indexes by name."""
        payload = {"rebuild": q.rebuild, "wait_s": q.wait_s}
        if isinstance(q, Refresh) and q.tier_from is not None:
            payload["tier_from"] = q.tier_from
        if isinstance(q, Search):
            payload |= {"refresh": q.refresh, "top_k": q.top_k, "rerank_k": q.rerank_k, "exact": q.exact}
            if q.by_image:
                (payload["like"],) = self._images([q.query], outcome, reporter) or [None]
                if payload["like"] is None:
                    raise BtError(f"cannot use {q.query.name}: {outcome.skipped[-1].reason}", "check the image")
            else:
                payload["query"] = q.query
        if self.client.own:  # (folders absolute there, and named as typed here)
            q = located(q, outcome, reporter)
            shown = {os.path.abspath(folder): str(folder) for folder in q.folders}
            payload |= {"files": self._images(q.files, outcome, reporter), "folders": list(shown)}
            payload["index"] = os.path.abspath(q.index if isinstance(q, Search) and q.index else _default_index(q))
        else:
            shown = {os.path.abspath(os.path.expanduser(spec)): spec for spec in q.specs}
            index = q.index if isinstance(q, Search) else (q.path if q.named else None)
            payload |= {"sources": list(shown), "index": server_index_name(index)}
        return payload, shown

    def _record(self, kind: type, data: dict, shown: dict):
        """A record as this side names it: its model as the client named it, its image path as typed."""
        try:
            record = kind.from_dict(data)
        except (TypeError, ValueError, KeyError, AttributeError):
            url = self.client.url
            raise BtError(
                f"the bt server at {url} sent a malformed record", "does it run this version of bt?"
            ) from None
        if isinstance(record, EmbeddingRecord):
            return replace(record, model=self.options.model)
        if isinstance(record, RetrievalRecord) and shown:
            return replace(record, image=as_typed(record.image, shown))
        return record

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


def _default_index(q) -> Path:
    """An index refresh's path (the default one unless named), a search's default index."""
    if isinstance(q, Refresh):
        return q.path
    from ..index.files import default_index_path

    return default_index_path()


class Auto:
    """``--server auto``: the automatic server (``autoserver``), started or reached on first use, so that a call that
    stops early (a usage error, --stats) starts nothing; in process, with a warning, if it cannot start."""

    def __init__(self, options: ModelOptions, timeout: float | None, warn):
        from ..durations import parse_duration

        self.options, self.timeout, self.warn = options, timeout, warn
        self._chosen: Backend | None = None
        keep_alive = os.environ.get("BT_KEEP_ALIVE")
        if keep_alive:  # (a value that does not parse: said now, as every BT_* variable is, never a fallback)
            try:
                parse_duration(keep_alive)
            except UsageError:
                raise UsageError(f"BT_KEEP_ALIVE={keep_alive} is not a duration", "e.g. 30s, 10m, 1h") from None

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

    def run(self, request, outcome, reporter):
        """What cannot run is said here first, as in process, before a server starts."""
        from .preflight import preflight

        preflight(request, self.options, loaded=self._chosen is not None)
        return self._backend().run(request, outcome, reporter)

    def __getattr__(self, name: str):
        return getattr(self._backend(), name)

    def in_process(self) -> Local:
        return Local(self.options)
