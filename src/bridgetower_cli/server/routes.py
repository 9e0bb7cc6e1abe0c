"""bt's own endpoints, made from the operations table: one route per operation (/v1/score, /v1/fill-mask,
/v1/embed, /v1/retrieve, /v1/index, /v1/eval, /v1/eval/classification, /v1/classify, /v1/explain), each taking the
body to the operation's request type (which checks itself), admitting its cost, and running the operation's task
through the same ``Operation.run`` as the CLI; plus /v1/models and /v1/status."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import MISSING, fields
from pathlib import Path

from fastapi import APIRouter, Request, Response

from ..errors import InputError
from ..operations import OPERATIONS, Explain, Operation, RankTexts, Refresh, Search
from ..records import Outcome
from ..sources import ImageSource
from . import schemas
from .dispatch import Dispatcher
from .hits import KEPT_HITS, HitLists, owner_of
from .web import make_thumbnails

PICTURE_SIDE = 1280  # explain's pictures for the page: the text's map at display size, each word's small
WORD_SIDE = 240

# The wire shape of each route's body (documented in the OpenAPI schema).
BODIES = {
    "/v1/score": schemas.ScoreIn,
    "/v1/fill-mask": schemas.FillMaskIn,
    "/v1/embed": schemas.EmbedIn,
    "/v1/retrieve": schemas.RetrieveIn,
    "/v1/index": schemas.IndexIn,
    "/v1/eval": schemas.EvalIn,
    "/v1/classify": schemas.ClassifyIn,
    "/v1/eval/classification": schemas.EvalClassificationIn,
    "/v1/explain": schemas.ExplainIn,
}


def router(dispatch: Dispatcher) -> APIRouter:
    routes = APIRouter()
    _about(routes, dispatch)
    by_route: dict[str, list[Operation]] = {}
    for operation in OPERATIONS.values():
        by_route.setdefault(operation.route, []).append(operation)
    for route, operations in by_route.items():
        _operation_route(routes, dispatch, route, operations)
    return routes


def body_of(operation: Operation) -> type:
    """The wire shape of an operation without a documented one: its request's fields by name (images as ``ImageIn``,
    paths as strings), with its defaults, and the model."""
    from typing import get_type_hints

    from pydantic import create_model

    from ..sources import ImageSource

    wire = {ImageSource: schemas.ImageIn, list[ImageSource]: list[schemas.ImageIn], Path: str, Path | None: str}
    shape = {"model": (str, operation.default_model)}
    hints = get_type_hints(operation.request)
    for f in fields(operation.request):
        kind = wire.get(hints[f.name], hints[f.name])
        default = f.default if f.default is not MISSING else (... if f.default_factory is MISSING else None)
        shape[f.name] = (kind if default is not None else kind | None, default)
    return create_model(f"{operation.request.__name__}In", __base__=schemas.ModelRequest, **shape)


def _operation_route(routes: APIRouter, dispatch: Dispatcher, route: str, operations: list[Operation]) -> None:
    """One route: the body to its request (``decoded``), the cost admitted, then the work as every other route."""
    body_type = BODIES.get(route) or body_of(operations[0])

    async def handler(body, request: Request) -> Response:
        dispatch.check_strings(body)
        dispatch.policy.model(body.model, body.model_name)  # (a model not served here: 403 before anything else)
        counted = decoded(dispatch, operations, body, counting=True)  # (its images named, not yet decoded)
        dispatch.admit(counted.cost(), getattr(counted, "images", ()))
        wanted = await asyncio.to_thread(decoded, dispatch, operations, body)  # (base64 off the event loop)
        operation = OPERATIONS[type(wanted)]
        needs, preferred = operation.heads(wanted)

        owner = owner_of(request.headers.get("authorization"))

        def work(runtime, reporter):
            outcome, batch = Outcome(), dispatch.batch_size(runtime) if runtime is not None else 0
            located = dispatch.located(wanted, outcome, reporter)
            result = operation.run(runtime, located, outcome, reporter, batch)
            if isinstance(wanted, Search):
                dispatch.hits.ranked += 1
                if body.keep:
                    return _kept(dispatch.hits, owner, list(result), body.top_k, reporter)
            if isinstance(wanted, Refresh) and not dispatch.settings.own:  # (the page's grid, ready when shown)
                make_thumbnails(dispatch, located.files or [], reporter)
            if isinstance(wanted, Explain) and body.pictures:
                return _pictured(result, wanted, reporter.facts["image_size"], body.words)
            return result

        loads = operation.uses_model(wanted)
        return await dispatch.events(request, body.model, needs, work, preferred, body.model_name, loads)

    handler.__annotations__ = {"body": body_type, "request": Request, "return": Response}
    handler.__doc__ = (operations[0].request.__doc__ or "").split("\n\n")[0]
    routes.add_api_route(route, handler, methods=["POST"], response_model=schemas.RecordsOut, name=operations[0].name)


def decoded(dispatch: Dispatcher, operations: list[Operation], body, counting: bool = False):
    """The body as its operation's request: fields by name, images read from the body (or, for evaluations, by server
    path, under the roots). A search names its index by name and its sources as server paths. ``counting``: the
    request only as far as its cost needs (its images by name, nothing decoded or opened), to admit it first."""
    kinds = {operation.request for operation in operations}
    if Search in kinds:
        return _search(dispatch, body)
    if Refresh in kinds:
        return _refresh(dispatch, body)
    (request_type,) = kinds
    values = {}
    for f in fields(request_type):
        if f.name not in type(body).model_fields:
            continue
        value = getattr(body, f.name)
        if f.name == "index":  # (one of the server's indexes, by name)
            value = dispatch.policy.index(value, False)
        elif isinstance(value, schemas.ImageIn):
            (value,) = [ImageSource(value.name, path="")] if counting else dispatch.images([value])
        elif isinstance(value, list) and value and isinstance(value[0], schemas.ImageIn):
            if counting:
                value = [ImageSource(image.name, path="") for image in value]
            elif getattr(request_type, "by_path", False):
                value = dispatch.image_paths(value)
            else:
                value = dispatch.images(value)
        if value is not None or f.default is not MISSING:  # (a field left out: the request's own default)
            values[f.name] = list(value) if isinstance(value, list) else value
    return request_type(**values)


def _search(dispatch: Dispatcher, body: schemas.RetrieveIn):
    """/v1/retrieve: texts for an image (``image`` and ``texts``), or images for a text or like an image."""
    if body.image is not None:
        (image,) = dispatch.images([body.image])
        return RankTexts(image, list(body.texts), body.top_k, body.rerank_k)
    if (body.query is None) == (body.like is None):
        raise InputError("a retrieve request needs a query (or like) and sources, or an image and texts")
    query = body.query if body.like is None else dispatch.images([body.like])[0]
    index = dispatch.policy.index(body.index, body.rebuild)
    files, folders = _own(dispatch, body)
    top_k = KEPT_HITS if body.keep else body.top_k  # (kept: every hit ranked once, pages cut from them)
    return Search(query, list(body.sources), index, body.rebuild, body.refresh, top_k, body.rerank_k,
                  body.wait_s, files, folders, body.exact)  # fmt: skip


def _refresh(dispatch: Dispatcher, body: schemas.IndexIn) -> Refresh:
    index = dispatch.policy.index(body.index, body.rebuild)
    files, folders = _own(dispatch, body)
    return Refresh(list(body.sources), index, body.rebuild, body.wait_s, files=files, folders=folders,
                   tier_from=body.tier_from)  # fmt: skip


def _own(dispatch: Dispatcher, body) -> tuple:
    """The files and folders a client of one's own server found (None: the sources are walked here, later)."""
    if not (body.files or body.folders):
        return None, None
    return dispatch.images(body.files), dispatch.folders(body.folders)


def _kept(hits: HitLists, owner: str, records: list, first: int, reporter):
    """A search's first ``first`` hits; all of them kept for paging, their id and count in the answer's meta."""
    from dataclasses import asdict

    name, total = hits.keep(owner, [asdict(record) for record in records])
    reporter.meta(hits=name, total=total)
    return records[:first]


def _pictured(records, request, side: int, words: bool):
    """Explain's records with their pictures at display size (data URLs of PNGs): the text's map at most
    ``PICTURE_SIDE`` pixels, with ``words`` each token's at most ``WORD_SIDE``; each image decoded once, at the
    reduced scale its pictures allow."""
    from ..pictures import model_view, overlay

    by_name, seen = {source.name: source for source in request.images}, {}
    for record in records:
        if record.image not in seen:
            seen.clear()
            large = model_view(by_name[record.image], side, PICTURE_SIDE)
            seen[record.image] = large, large.resize(_within(large.size, WORD_SIDE))
        large, small = seen[record.image]
        caption = f"{record.text} | match {record.probability:.3f} | layer {record.layer}"
        record.picture = _png(overlay(large, record.grid, side, caption))
        for token in record.tokens if words else ():
            token.picture = _png(overlay(small, token.grid, side, token.token))
        yield record


def _within(size: tuple[int, int], longest: int) -> tuple[int, int]:
    scale = min(1.0, longest / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _png(picture) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


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
            "rankings": dispatch.hits.ranked,
            "rss_mb": _rss_mb(),
            "idle_exit_s": settings.keep_alive_s if settings.idle_exit else None,
        }


def _rss_mb() -> float | None:
    """The server's resident memory (Linux), in MiB."""
    try:
        with open("/proc/self/statm") as statm:
            return round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None
