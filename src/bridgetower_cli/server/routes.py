"""bt's own endpoints, one per command: /v1/score, /v1/fill-mask, /v1/embed, /v1/retrieve, /v1/index, /v1/eval,
/v1/explain (the CLI's records, as events while they are made or as one answer), /v1/models and /v1/status."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fastapi import APIRouter, Request, Response

from ..errors import InputError, TooLarge
from ..model.catalog import classify_heads, retrieval_heads
from ..records import Outcome
from .dispatch import Dispatcher
from .schemas import (
    ClassifyIn,
    EmbedIn,
    EvalClassificationIn,
    EvalIn,
    ExplainIn,
    FillMaskIn,
    IndexIn,
    RecordsOut,
    RetrieveIn,
    ScoreIn,
)


def router(dispatch: Dispatcher) -> APIRouter:
    routes = APIRouter()
    _about(routes, dispatch)
    _pairs(routes, dispatch)
    _evaluation(routes, dispatch)
    _classification(routes, dispatch)
    _retrieval(routes, dispatch)
    return routes


def bounded(settings, pairs: int, candidates: int = 0) -> None:
    """Refuse at admission what would answer with more than the limits allow (a few bytes asking for millions of
    records)."""
    if pairs > settings.max_pairs:
        raise TooLarge(f"{pairs} image-text pairs, over the limit of {settings.max_pairs}", "send fewer")
    if candidates > settings.max_candidates:
        limit = settings.max_candidates
        raise TooLarge(f"{candidates} mask candidates, over the limit of {limit}", "lower top_k or send fewer")


def _about(routes: APIRouter, dispatch: Dispatcher) -> None:
    settings, started = dispatch.settings, time.time()

    @routes.get("/v1/models")
    async def models() -> dict:
        """The models loaded now."""
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "owned_by": "bt"} for name in dispatch.pool.models],
        }

    @routes.get("/v1/status")
    async def status() -> dict:
        """The server's process, uptime, loaded models, requests in flight and memory (`bt serve --status`)."""
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - started, 1),
            "models": [model.shown for model in dispatch.pool.loaded()],
            "requests": len(dispatch.pool.tokens),
            "cancelled": dispatch.pool.cancelled,
            "rss_mb": _rss_mb(),
            "idle_exit_s": settings.keep_alive_s if settings.idle_exit else None,
        }


def _pairs(routes: APIRouter, dispatch: Dispatcher) -> None:
    settings = dispatch.settings

    @routes.post("/v1/score", response_model=RecordsOut)
    async def score(body: ScoreIn, request: Request) -> Response:
        """ITM scores of every image x text pair, as `bt score`."""
        from ..tasks import pairs

        dispatch.check(body, body.texts, body.images)
        bounded(settings, len(body.images) * len(body.texts))

        def work(runtime, reporter):
            sources, batch = dispatch.images(body.images), dispatch.batch_size(runtime)
            return pairs.score(runtime, sources, list(body.texts), Outcome(), batch, body.top_k, reporter)

        return await dispatch.events(request, body.model, ("itm",), work, shown=body.model_name)

    @routes.post("/v1/fill-mask", response_model=RecordsOut)
    async def fill_mask(body: FillMaskIn, request: Request) -> Response:
        """Masked words of each text given each image, as `bt fill-mask`."""
        from ..tasks import pairs

        dispatch.check(body, [*body.texts, *(body.targets or [])], body.images)
        masks = sum(text.count("<mask>") for text in body.texts)
        bounded(settings, len(body.images) * len(body.texts), len(body.images) * masks * body.top_k)

        def work(runtime, reporter):
            sources, batch = dispatch.images(body.images), dispatch.batch_size(runtime)
            texts, top_k, targets = list(body.texts), body.top_k, body.targets
            return pairs.fill_mask(runtime, sources, texts, Outcome(), batch, top_k, targets, reporter)

        return await dispatch.events(request, body.model, ("mlm",), work, shown=body.model_name)

    @routes.post("/v1/embed", response_model=RecordsOut)
    async def embed(body: EmbedIn, request: Request) -> Response:
        """ITC embeddings of images, texts or pairs, as `bt embed`."""
        from ..tasks import pairs

        dispatch.check(body, body.texts, body.images)
        bounded(settings, len(body.images) * len(body.texts) if body.kind == "cross" else 0)

        def work(runtime, reporter):
            sources, batch = dispatch.images(body.images), dispatch.batch_size(runtime)
            return pairs.embed(runtime, body.kind, Outcome(), sources, list(body.texts), batch, reporter)

        return await dispatch.events(request, body.model, ("itc",), work, shown=body.model_name)

    @routes.post("/v1/explain", response_model=RecordsOut)
    async def explain(body: ExplainIn, request: Request) -> Response:
        """Grad-CAM maps of every image x text pair, as `bt explain` (the client draws the pictures; the `meta`
        event carries the short side the model resizes images to)."""
        from ..tasks.explain import explain as explained

        dispatch.check(body, body.texts, body.images)
        bounded(settings, len(body.images) * len(body.texts))

        def work(runtime, reporter):
            sources, batch = dispatch.images(body.images), dispatch.batch_size(runtime)
            reporter.meta(image_size=runtime.image_size)
            pairs = explained(runtime, sources, list(body.texts), Outcome(), body.layer, batch, reporter)
            if not body.pictures:
                return (record for record, _ in pairs)
            return (_drawn(record, image, runtime.image_size, body.words) for record, image in pairs)

        return await dispatch.events(request, body.model, ("itm",), work, shown=body.model_name)


def _evaluation(routes: APIRouter, dispatch: Dispatcher) -> None:
    settings = dispatch.settings

    @routes.post("/v1/eval", response_model=RecordsOut)
    async def evaluate(body: EvalIn, request: Request) -> Response:
        """Image-text retrieval recall on a caption set, as `bt eval` (its images: server paths)."""
        from ..tasks.captions import CaptionSet
        from ..tasks.evaluation import evaluate as recall

        dispatch.check(body, body.texts)
        if len(body.images) > settings.max_images:
            raise TooLarge(f"{len(body.images)} images, over the limit of {settings.max_images}", "send fewer")
        if len(body.text_image) != len(body.texts) or not all(0 <= i < len(body.images) for i in body.text_image):
            raise InputError("text_image must give, for each text, the index of one of the images")
        sources = dispatch.image_paths(body.images)
        names, files = [s.name for s in sources], [s.path for s in sources]
        captions = CaptionSet(names, list(body.texts), list(body.text_image), files)
        needs = ("itc",) if body.itc_only else ("itm",)

        def work(runtime, reporter):
            batch = dispatch.batch_size(runtime)
            return recall(runtime, captions, Outcome(), body.k_test, body.itc_only, batch, reporter)

        return await dispatch.events(request, body.model, needs, work, ("itm", "itc"), shown=body.model_name)


def _classification(routes: APIRouter, dispatch: Dispatcher) -> None:
    settings = dispatch.settings

    def checked(body, labels: list[str]) -> list[str]:
        """The request's templates (CLIP's seven by default), its strings and counts checked."""
        from ..tasks.labels import prompts, read_templates

        templates = read_templates(body.templates, None)
        dispatch.check(body, prompts(labels, templates), body.images)
        pairs = len(body.images) * len(labels) * len(templates) if body.method in ("itm", "auto") else 0
        bounded(settings, pairs)
        return templates

    @routes.post("/v1/classify", response_model=RecordsOut)
    async def classify(body: ClassifyIn, request: Request) -> Response:
        """Each image's most probable labels, as `bt classify`."""
        from ..tasks import classify as classification

        templates = checked(body, body.labels)

        def work(runtime, reporter):
            sources, batch = dispatch.images(body.images), dispatch.batch_size(runtime)
            labels, k = list(body.labels), body.top_k
            return classification.classify(
                runtime, sources, labels, templates, Outcome(), body.method, k, body.rerank_k, batch, reporter
            )

        needs, preferred = classify_heads(body.method)
        return await dispatch.events(request, body.model, needs, work, preferred, body.model_name)

    @routes.post("/v1/eval/classification", response_model=RecordsOut)
    async def evaluate(body: EvalClassificationIn, request: Request) -> Response:
        """Zero-shot accuracy on labelled images, as `bt eval --task classification` (the confusion matrix in the
        `meta` event)."""
        from ..tasks import classify as classification
        from ..tasks.labels import LabelledFolder

        templates = checked(body, body.classes)
        if len(body.targets) != len(body.images) or not all(0 <= t < len(body.classes) for t in body.targets):
            raise InputError("targets must give, for each image, the index of its class")
        sources = dispatch.image_paths(body.images)
        folder = LabelledFolder(list(body.classes), sources, list(body.targets))

        def work(runtime, reporter):
            batch = dispatch.batch_size(runtime)
            record, confusion = classification.evaluate_classification(
                runtime, folder, templates, Outcome(), body.method, body.rerank_k, batch, reporter
            )
            reporter.meta(confusion=confusion)
            return record

        needs, preferred = classify_heads(body.method)
        return await dispatch.events(request, body.model, needs, work, preferred, body.model_name)


def _drawn(record, image, side: int, words: bool):
    """The record with its picture, as a data URL of a PNG."""
    import base64
    import io

    from ..pictures import explained_picture

    buffer = io.BytesIO()
    explained_picture(image, record, side, words).save(buffer, "PNG")
    record.picture = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return record


def _rss_mb() -> float | None:
    """The server's resident memory (Linux), in MiB."""
    try:
        with open("/proc/self/statm") as statm:
            return round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def _retrieval(routes: APIRouter, dispatch: Dispatcher) -> None:
    settings = dispatch.settings

    def served(body, reporter, outcome, walk: bool):
        """The images of a search or an index refresh, and the folders that scope it: as the client found them (a
        server of one's own), or found here under the roots, each checked."""
        if body.files or body.folders:
            return dispatch.images(body.files), dispatch.folders(body.folders)
        found = dispatch.policy.sources(body.sources, walk=walk)
        for name, reason in found.left_out:
            outcome.skip(name, reason, reporter)
        return found.sources, found.folders

    def checked_sources(body) -> None:
        if len(body.sources) > settings.max_images:
            raise TooLarge(f"{len(body.sources)} sources, over the limit of {settings.max_images}", "send fewer")

    @routes.post("/v1/retrieve", response_model=RecordsOut)
    async def retrieve(body: RetrieveIn, request: Request) -> Response:
        """Images for a text or like an image (over an index, refreshed for the sources first), or texts for an
        image, as `bt retrieve`."""
        from ..tasks import retrieve as retrieval

        needs, preferred = retrieval_heads(body.rerank_k)
        if body.image is not None:
            if not body.texts:
                raise InputError("an image query needs texts to rank", 'send them as "texts"')
            dispatch.check(body, body.texts, [body.image])

            def rank_texts(runtime, reporter):
                (source,), batch = dispatch.images([body.image]), dispatch.batch_size(runtime)
                texts, top_k, rerank_k = list(body.texts), body.top_k, body.rerank_k
                return retrieval.retrieve_texts(runtime, source, texts, top_k, rerank_k, batch, reporter)

            return await dispatch.events(request, body.model, needs, rank_texts, preferred, body.model_name)
        if (body.query is None) == (body.like is None):
            raise InputError("a retrieve request needs a query (or like) and sources, or an image and texts")
        if body.like is not None:
            needs, preferred, rerank_k = ("itc",), retrieval_heads(0)[1], 0
        else:
            rerank_k = body.rerank_k
            dispatch.check(body, [body.query])
        checked_sources(body)
        index = dispatch.policy.index(body.index, body.rebuild)
        if not (body.sources or body.files or body.folders or not body.refresh):
            raise InputError("a retrieve request needs sources (or refresh off: the whole index)")

        def search(runtime, reporter):
            outcome = Outcome()
            sources, folders = served(body, reporter, outcome, walk=body.refresh)
            if not body.refresh and not body.sources and not body.files and not folders:
                folders = [Path(os.sep)]  # the whole index
            query = body.query if body.like is None else dispatch.images([body.like])[0]
            return retrieval.retrieve_images(
                runtime, query, sources, outcome, folders, index, body.rebuild, body.top_k, rerank_k,
                dispatch.batch_size(runtime), reporter, refresh=body.refresh, wait_s=body.wait_s,
            )  # fmt: skip

        return await dispatch.events(request, body.model, needs, search, preferred, body.model_name)

    @routes.post("/v1/index", response_model=RecordsOut)
    async def index(body: IndexIn, request: Request) -> Response:
        """Bring an index up to date with images, as `bt index` (one result record: what the refresh did)."""
        from ..tasks import indexing

        checked_sources(body)
        if not (body.sources or body.files):
            raise InputError("an index request needs sources")
        path = dispatch.policy.index(body.index, body.rebuild)

        def work(runtime, reporter):
            outcome = Outcome()
            sources, folders = served(body, reporter, outcome, walk=True)
            opened = indexing.open_index(runtime, path, body.rebuild, wait_s=body.wait_s)
            batch = dispatch.batch_size(runtime)
            return indexing.index_images(runtime, opened, sources, outcome, folders, batch, reporter)

        return await dispatch.events(request, body.model, ("itc",), work, shown=body.model_name)
