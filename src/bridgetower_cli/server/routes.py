"""bt's own endpoints: /v1/score, /v1/fill-mask, /v1/embed, /v1/retrieve (the CLI's records), /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..errors import InputError, TooLarge
from ..model.catalog import retrieval_heads
from ..records import Outcome
from .dispatch import Collected, Dispatcher, answer
from .schemas import EmbedIn, FillMaskIn, RecordsOut, RetrieveIn, ScoreIn


def router(dispatch: Dispatcher) -> APIRouter:
    routes = APIRouter()
    settings = dispatch.settings

    def bounded(pairs: int, candidates: int = 0) -> None:
        """Refuse at admission what would answer with more than the limits allow (a few bytes asking for millions
        of records)."""
        if pairs > settings.max_pairs:
            raise TooLarge(f"{pairs} image-text pairs, over the limit of {settings.max_pairs}", "send fewer")
        if candidates > settings.max_candidates:
            limit = settings.max_candidates
            raise TooLarge(f"{candidates} mask candidates, over the limit of {limit}", "lower top_k or send fewer")

    @routes.get("/v1/models")
    async def models() -> dict:
        """The models loaded now."""
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "owned_by": "bt"} for name in dispatch.pool.models],
        }

    @routes.post("/v1/score", response_model=RecordsOut)
    async def score(body: ScoreIn, request: Request) -> Response:
        """ITM scores of every image x text pair, as `bt score`."""
        from ..tasks import pairs

        dispatch.check(body, body.texts, body.images)
        bounded(len(body.images) * len(body.texts))
        outcome, reporter = Outcome(), Collected()

        def work(runtime):
            sources, batch = dispatch.images(body.images), dispatch.batch_size(runtime)
            records = pairs.score(runtime, sources, list(body.texts), outcome, batch, body.top_k, reporter)
            return answer(records, outcome, reporter)

        return await dispatch.run(request, body.model, ("itm",), work)

    @routes.post("/v1/fill-mask", response_model=RecordsOut)
    async def fill_mask(body: FillMaskIn, request: Request) -> Response:
        """Masked words of each text given each image, as `bt fill-mask`."""
        from ..tasks import pairs

        dispatch.check(body, [*body.texts, *(body.targets or [])], body.images)
        masks = sum(text.count("<mask>") for text in body.texts)
        bounded(len(body.images) * len(body.texts), len(body.images) * masks * body.top_k)
        outcome, reporter = Outcome(), Collected()

        def work(runtime):
            sources, batch = dispatch.images(body.images), dispatch.batch_size(runtime)
            texts, top_k, targets = list(body.texts), body.top_k, body.targets
            records = pairs.fill_mask(runtime, sources, texts, outcome, batch, top_k, targets, reporter)
            return answer(records, outcome, reporter)

        return await dispatch.run(request, body.model, ("mlm",), work)

    @routes.post("/v1/embed", response_model=RecordsOut)
    async def embed(body: EmbedIn, request: Request) -> Response:
        """ITC embeddings of images, texts or pairs, as `bt embed`."""
        from ..tasks import pairs

        dispatch.check(body, body.texts, body.images)
        bounded(len(body.images) * len(body.texts) if body.kind == "cross" else 0)
        outcome, reporter = Outcome(), Collected()

        def work(runtime):
            sources, batch = dispatch.images(body.images), dispatch.batch_size(runtime)
            records = pairs.embed(runtime, body.kind, outcome, sources, list(body.texts), batch, reporter)
            return answer(records, outcome, reporter)

        return await dispatch.run(request, body.model, ("itc",), work)

    _retrieval(routes, dispatch)
    return routes


def _retrieval(routes: APIRouter, dispatch: Dispatcher) -> None:
    settings = dispatch.settings

    @routes.post("/v1/retrieve", response_model=RecordsOut)
    async def retrieve(body: RetrieveIn, request: Request) -> Response:
        """Images for a text (over one of the server's indexes, refreshed for `sources`), or texts for an image."""
        from ..tasks import retrieve as retrieval

        needs, preferred = retrieval_heads(body.rerank_k)
        outcome, reporter = Outcome(), Collected()
        if body.image is not None:
            if not body.texts:
                raise InputError("an image query needs texts to rank", 'send them as "texts"')
            dispatch.check(body, body.texts, [body.image])

            def rank_texts(runtime):
                (source,), batch = dispatch.images([body.image]), dispatch.batch_size(runtime)
                texts, top_k, rerank_k = list(body.texts), body.top_k, body.rerank_k
                records = retrieval.retrieve_texts(runtime, source, texts, top_k, rerank_k, batch, reporter)
                return answer(records, outcome, reporter)

            return await dispatch.run(request, body.model, needs, rank_texts, preferred)
        if body.query is None or not body.sources:
            raise InputError("a retrieve request needs a query and sources, or an image and texts")
        dispatch.check(body, [body.query])
        if len(body.sources) > settings.max_images:
            raise TooLarge(f"{len(body.sources)} sources, over the limit of {settings.max_images}", "send fewer")
        index = dispatch.policy.index(body.index, body.rebuild)

        def search(runtime):
            served = dispatch.policy.sources(body.sources, walk=body.refresh)
            for name, reason in served.left_out:
                outcome.skip(name, reason, reporter)
            records = retrieval.retrieve_images(
                runtime,
                body.query,
                served.sources,
                outcome,
                served.folders,
                index,
                body.rebuild,
                body.top_k,
                body.rerank_k,
                dispatch.batch_size(runtime),
                reporter,
                refresh=body.refresh,
            )
            return answer(records, outcome, reporter)

        return await dispatch.run(request, body.model, needs, search, preferred)
