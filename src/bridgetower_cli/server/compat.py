"""The ecosystem's shapes: OpenAI / infinity embeddings and Cohere / TEI rerank, through the same tasks as bt's
own endpoints. An input that cannot be used is a 422 naming it (these APIs have no partial answers)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response

from ..errors import InputError
from ..operations import Embed, Score, operation_of
from ..records import Outcome, Reporter
from .dispatch import Dispatcher
from .schemas import EmbeddingsIn, ImageIn, RerankIn


def _refuse_skips(outcome: Outcome) -> None:
    if outcome.skipped:
        raise InputError(f"{outcome.skipped[0].name}: {outcome.skipped[0].reason}", "send images bt can read")


def router(dispatch: Dispatcher) -> APIRouter:
    routes = APIRouter()

    @routes.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsIn, request: Request) -> Response:
        """OpenAI / infinity embeddings: texts, or images as data URLs (`modality`)."""
        inputs = [body.input] if isinstance(body.input, str) else list(body.input)
        if not inputs:
            raise InputError("input is empty", "send at least one text or image")
        images = [ImageIn(name=f"input[{k}]", data=x) for k, x in enumerate(inputs)] if body.modality == "image" else []
        texts = inputs if body.modality == "text" else []
        dispatch.check(body, texts, images)
        wanted = Embed(body.modality, await asyncio.to_thread(dispatch.images, images), texts)
        operation, outcome = operation_of(wanted), Outcome()

        def work(runtime):
            batch = dispatch.batch_size(runtime)
            records = list(operation.run(runtime, wanted, outcome, Reporter(), batch))
            _refuse_skips(outcome)
            tokens = sum(len(ids) for ids in runtime.tokenize(texts)[0]) if texts else 0
            return {
                "object": "list",
                "data": [{"object": "embedding", "index": k, "embedding": r.embedding} for k, r in enumerate(records)],
                "model": body.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }

        needs, preferred = operation.heads(wanted)
        return await dispatch.run(request, body.model, needs, work, preferred)

    @routes.post("/v1/rerank")
    async def rerank(body: RerankIn, request: Request) -> Response:
        """Cohere / TEI rerank by the ITM match probability: a text and image documents, or an image and texts."""
        image_query = body.query.startswith("data:image/")
        documents = list(body.documents)
        if image_query:
            images, texts = [ImageIn(name="query", data=body.query)], documents
        else:
            images = [ImageIn(name=f"documents[{k}]", data=d) for k, d in enumerate(documents)]
            texts = [body.query]
        dispatch.check(body, texts, images)
        wanted = Score(await asyncio.to_thread(dispatch.images, images), list(dict.fromkeys(texts)))
        operation, outcome = operation_of(wanted), Outcome()

        def work(runtime):
            records = list(operation.run(runtime, wanted, outcome, Reporter(), dispatch.batch_size(runtime)))
            _refuse_skips(outcome)
            if image_query:
                probability = {r.text: r.probability for r in records}
                scores = [probability[text] for text in documents]
            else:
                probability = {r.image: r.probability for r in records}
                scores = [probability[image.name] for image in images]
            results = [{"index": k, "relevance_score": score} for k, score in enumerate(scores)]
            results.sort(key=lambda r: r["relevance_score"], reverse=True)
            return {"results": results[: body.top_n], "model": body.model}

        needs, preferred = operation.heads(wanted)
        return await dispatch.run(request, body.model, needs, work, preferred)

    return routes
