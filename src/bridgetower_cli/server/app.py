"""``bt serve``: an ASGI app (FastAPI) that keeps models loaded and answers bt's own requests (the CLI's record
schemas) and the ecosystem's shapes (OpenAI / infinity embeddings, Cohere / TEI rerank).

Every model runs on one worker thread of its own, fed by a queue: model calls from concurrent requests are
serialised there, and their ITM pairs are fused together, up to the batch size, within a short window
(micro-batching). Requests do the rest (decoding, preprocessing, ranking) on the server's thread pool, through the
same task functions as the CLI, so the records are the CLI's. A bounded number of requests waits per model; past it
the answer is 503 with Retry-After. Run it with ``bt serve``, or as ``bridgetower_cli.server:app`` under any ASGI
server (settings from the environment: see ``Settings.from_env``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import ipaddress
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ..errors import BtError
from ..model.catalog import DEFAULT_CONTRASTIVE_MODEL, DEFAULT_MATCHING_MODEL, retrieval_heads
from ..records import Outcome, Reporter
from ..sources import ImageSource, expand_image_sources

# -- settings ------------------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """How the server runs; ``bt serve`` fills it from its options, an ASGI runner from ``BT_SERVE_*`` variables."""

    models: list[str] = field(default_factory=list)  # preloaded at start
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    batch_size: int | None = None
    keep_alive_s: float | None = None  # unload a model idle this long (None: never)
    api_key: str | None = None
    allow_paths: list[Path] = field(default_factory=list)
    max_body_bytes: int = 64 * 2**20
    max_image_bytes: int = 32 * 2**20
    max_waiting: int = 64  # requests waiting per model before 503
    batch_window_s: float = 0.005

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        threads = env.get("BT_THREADS")
        keep_alive = env.get("BT_SERVE_KEEP_ALIVE")
        return cls(
            models=[m for m in env.get("BT_SERVE_MODELS", "").split(",") if m],
            device=env.get("BT_DEVICE", "auto"),
            dtype=env.get("BT_DTYPE", "auto"),
            threads=int(threads) if threads else None,
            keep_alive_s=parse_duration(keep_alive) if keep_alive else None,
            api_key=env.get("BT_API_KEY") or None,
            allow_paths=[Path(p).resolve() for p in env.get("BT_SERVE_ALLOW_PATHS", "").split(os.pathsep) if p],
            max_body_bytes=int(float(env.get("BT_SERVE_MAX_BODY_MB", 64)) * 2**20),
            max_image_bytes=int(float(env.get("BT_SERVE_MAX_IMAGE_MB", 32)) * 2**20),
        )


def parse_duration(text: str) -> float:
    """``30s``, ``5m``, ``1h`` or plain seconds, as ollama's keep_alive."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise BtError(f"not a duration: {text!r}", "e.g. 30s, 5m, 1h") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the model worker: one thread per model, micro-batched ITM pairs -------------------------------------------------


class Busy(Exception):
    """Too many requests wait for this model."""


@dataclass
class _Call:
    function: Any
    args: tuple
    future: Future


@dataclass
class _Match:
    pairs: list
    future: Future


class ModelWorker:
    """Runs a runtime's model calls on one thread. ``match`` requests arriving within ``window_s`` of each other are
    fused together, ``batch_size`` pairs per forward pass."""

    def __init__(self, runtime, batch_size: int, window_s: float):
        self.runtime = runtime
        self.batch_size = batch_size
        self.window_s = window_s
        self.jobs: queue.Queue = queue.Queue()
        self.batches: list[int] = []  # pairs per fused group (for tests and benchmarks)
        self.thread = threading.Thread(target=self._run, name="bt-model", daemon=True)
        self.thread.start()

    def call(self, function, *args):
        future: Future = Future()
        self.jobs.put(_Call(function, args, future))
        return future.result()

    def match(self, pairs: list) -> list:
        future: Future = Future()
        self.jobs.put(_Match(pairs, future))
        return future.result()

    def stop(self, wait: bool = False) -> None:
        """No more jobs after those queued; ``wait``: until the thread is done (at shutdown, so that no model call
        is still running while the interpreter finalises)."""
        self.jobs.put(None)
        if wait:
            self.thread.join(timeout=60)

    def _run(self) -> None:
        waiting: list = []
        while True:
            job = waiting.pop(0) if waiting else self.jobs.get()
            if job is None:
                return
            if isinstance(job, _Call):
                self._settle(job.future, job.function, *job.args)
                continue
            group, deadline = [job], time.monotonic() + self.window_s
            while sum(len(j.pairs) for j in group) < self.batch_size:
                try:
                    nxt = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if isinstance(nxt, _Match):
                    group.append(nxt)
                else:
                    waiting.append(nxt)
                    break
            self._match_group(group)

    def _match_group(self, group: list[_Match]) -> None:
        pairs = [pair for job in group for pair in job.pairs]
        self.batches.append(len(pairs))
        try:
            scores = self.runtime.match_scores(pairs, self.batch_size)
        except BaseException as error:  # every waiting request hears of it
            for job in group:
                job.future.set_exception(error)
            return
        start = 0
        for job in group:
            job.future.set_result(scores[start : start + len(job.pairs)])
            start += len(job.pairs)

    @staticmethod
    def _settle(future: Future, function, *args) -> None:
        try:
            future.set_result(function(*args))
        except BaseException as error:
            future.set_exception(error)


class ServedRuntime:
    """A runtime whose model calls go through a ModelWorker: the task functions run unchanged on top of it."""

    def __init__(self, runtime, worker: ModelWorker):
        self._runtime = runtime
        self._worker = worker

    def __getattr__(self, name: str):
        return getattr(self._runtime, name)

    def encode_texts(self, texts):
        return self._worker.call(self._runtime.encode_texts, texts)

    def encode_images(self, pixel_values):
        return self._worker.call(self._runtime.encode_images, pixel_values)

    def fuse(self, texts, images):
        return self._worker.call(self._runtime.fuse, texts, images)

    def mlm_logits(self, fused, pair, positions):
        return self._worker.call(self._runtime.mlm_logits, fused, pair, positions)

    def cross_embeddings(self, fused):
        return self._worker.call(self._runtime.cross_embeddings, fused)

    def match_scores(self, pairs, batch_size):
        return self._worker.match(pairs)


@dataclass
class _Model:
    served: ServedRuntime
    worker: ModelWorker
    slots: threading.BoundedSemaphore
    last_used: float
    in_use: int = 0


class ModelPool:
    """Loaded models by name: loaded on first use (or at start), unloaded after ``keep_alive_s`` idle."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.models: dict[str, _Model] = {}
        self.lock = threading.Lock()
        self.loading: dict[str, threading.Lock] = {}

    @contextlib.contextmanager
    def use(self, name: str):
        model = self._get(name)
        if not model.slots.acquire(blocking=False):
            raise Busy(name)
        with self.lock:
            model.in_use += 1
        try:
            yield model.served
        finally:
            model.slots.release()
            with self.lock:
                model.in_use -= 1
                model.last_used = time.monotonic()

    def _get(self, name: str) -> _Model:
        with self.lock:
            if name in self.models:
                return self.models[name]
            gate = self.loading.setdefault(name, threading.Lock())
        with gate:  # one load per model, other requests for it wait
            with self.lock:
                if name in self.models:
                    return self.models[name]
            model = self._load(name)
            with self.lock:
                self.models[name] = model
            return model

    def _load(self, name: str) -> _Model:
        from ..model.hub import resolve_checkpoint
        from ..model.loading import load_model
        from ..model.runtime import Runtime

        s = self.settings
        runtime = Runtime(load_model(resolve_checkpoint(name), name, s.device, s.dtype, threads=s.threads))
        worker = ModelWorker(runtime, s.batch_size or runtime.default_batch_size, s.batch_window_s)
        slots = threading.BoundedSemaphore(s.max_waiting)
        return _Model(ServedRuntime(runtime, worker), worker, slots, time.monotonic())

    def unload_idle(self) -> list[str]:
        if self.settings.keep_alive_s is None:
            return []
        now, gone = time.monotonic(), []
        with self.lock:
            for name, model in list(self.models.items()):
                if model.in_use == 0 and now - model.last_used > self.settings.keep_alive_s:
                    model.worker.stop()
                    del self.models[name]
                    gone.append(name)
        return gone

    def close(self) -> None:
        with self.lock:
            models = list(self.models.values())
            self.models.clear()
        for model in models:
            model.worker.stop(wait=True)


# -- request and response shapes ---------------------------------------------------------------------------------


class ImageIn(BaseModel):
    name: str = Field(description="How records refer to the image (the client's path or URL).")
    data: str = Field(description="The image file's bytes, base64-encoded (or a data:image/...;base64, URL).")


class ScoreIn(BaseModel):
    model: str = Field(DEFAULT_MATCHING_MODEL, description="Hub id or checkpoint directory on the server.")
    images: list[ImageIn] = Field(description="Images, in order.")
    texts: list[str] = Field(min_length=1, description="Texts to score against every image.")
    top_k: int | None = Field(None, ge=1, description="Keep the best k texts per image.")


class FillMaskIn(BaseModel):
    model: str = Field(DEFAULT_MATCHING_MODEL, description="Hub id or checkpoint directory on the server.")
    images: list[ImageIn] = Field(description="Images, in order.")
    texts: list[str] = Field(min_length=1, description="Texts with <mask> tokens.")
    top_k: int = Field(5, ge=1, description="Candidates per mask.")
    targets: list[str] | None = Field(None, description="Restrict the candidates to these words.")


class EmbedIn(BaseModel):
    model: str = Field(DEFAULT_CONTRASTIVE_MODEL, description="Hub id or checkpoint directory on the server.")
    kind: Literal["image", "text", "cross"] = Field(description="image, text, or cross ((image, text) pairs).")
    images: list[ImageIn] = Field(default_factory=list, description="Images (kind image or cross).")
    texts: list[str] = Field(default_factory=list, description="Texts (kind text or cross).")


class RetrieveIn(BaseModel):
    model: str = Field(DEFAULT_CONTRASTIVE_MODEL, description="Hub id or checkpoint directory on the server.")
    query: str | None = Field(None, description="A text query: rank the images under `sources`.")
    sources: list[str] = Field(default_factory=list, description="Server paths (under --allow-path) to search.")
    index: str | None = Field(None, description="Server path of the index (under --allow-path); default the server's.")
    rebuild: bool = Field(False, description="Start the index afresh.")
    refresh: bool = Field(True, description="Refresh the index for the sources first (false: query it as it is).")
    image: ImageIn | None = Field(None, description="An image query: rank `texts` for it.")
    texts: list[str] = Field(default_factory=list, description="With `image`: the texts to rank.")
    top_k: int = Field(10, ge=1, description="How many hits.")
    rerank_k: int = Field(5, ge=0, description="ITM rescoring of the best ITC hits (0: ITC alone).")


class EmbeddingsIn(BaseModel):
    """OpenAI / infinity embeddings request."""

    model: str = Field(DEFAULT_CONTRASTIVE_MODEL, description="Hub id or checkpoint directory on the server.")
    input: str | list[str] = Field(description="Texts, or images as data:image/...;base64, URLs.")
    modality: Literal["text", "image"] = Field("text", description="What `input` holds.")
    encoding_format: Literal["float"] = Field("float", description="Only float lists.")


class RerankIn(BaseModel):
    """Cohere / TEI rerank request: a text query and image documents (data URLs), or an image query and texts."""

    model: str = Field(DEFAULT_MATCHING_MODEL, description="Hub id or checkpoint directory on the server.")
    query: str = Field(description="A text, or an image as a data:image/...;base64, URL.")
    documents: list[str] = Field(min_length=1, description="Images (data URLs) for a text query, texts for an image.")
    top_n: int | None = Field(None, ge=1, description="Keep the best n (default: all).")


class Collected(Reporter):
    """What a task reported, to send back with its records (the client shows it as the CLI would)."""

    def __init__(self):
        self.messages: list[dict] = []

    def warn(self, message: str, kind: str | None = None) -> None:
        self.messages.append({"level": "warning", "message": message, "kind": kind})

    def info(self, message: str) -> None:
        self.messages.append({"level": "info", "message": message})


class RequestError(Exception):
    def __init__(self, status: int, message: str, hint: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.hint, self.headers = status, message, hint, headers


# -- the app ---------------------------------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: the request body is read first, up to ``limit`` bytes (chunked or not); past it the answer
    is 413 and the app never sees the request."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                too_large = RequestError(413, f"request body over {self.limit // 2**20} MiB")
                return await _error(too_large)(scope, receive, send)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def decode_data(data: str, limit: int, what: str) -> bytes:
    if data.startswith("data:"):
        header, _, data = data.partition(",")
        if ";base64" not in header:
            raise RequestError(422, f"{what} is a data URL without base64", "send data:image/...;base64,...")
    if len(data) * 3 // 4 > limit:
        raise RequestError(413, f"{what} is larger than {limit // 2**20} MiB")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, f"{what} is not valid base64") from None


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app. ``settings`` default to ``Settings.from_env()``."""
    settings = settings or Settings.from_env()
    pool = ModelPool(settings)
    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for name in settings.models:
            pool._get(name)
        reaper = threading.Thread(target=_reap, daemon=True)
        reaper.start()
        yield
        stop.set()
        pool.close()

    def _reap() -> None:
        while not stop.wait(min(5.0, settings.keep_alive_s or 5.0)):
            pool.unload_idle()

    app = FastAPI(
        title="bt",
        summary="BridgeTower at a warm server: score, fill-mask, embed, retrieve, embeddings, rerank.",
        lifespan=lifespan,
    )
    app.state.pool = pool
    app.state.settings = settings
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if settings.api_key is not None and request.url.path not in ("/health", "/docs", "/openapi.json"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
                return _error(RequestError(401, "missing or wrong API key", "send Authorization: Bearer KEY"))
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            return _error(RequestError(413, f"request body over {settings.max_body_bytes // 2**20} MiB"))
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError):
        return _error(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return _error(RequestError(422, f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):  # never a traceback in a response
        return _error(RequestError(500, f"unexpected {type(error).__name__}", "see the server's log"))

    def run(model: str, needs: tuple[str, ...], work, preferred: tuple[str, ...] = ()):
        from ..model.loading import require_heads

        try:
            with pool.use(model) as runtime:
                require_heads(runtime.loaded.heads, needs, model, preferred)
                return work(runtime)
        except Busy:
            raise RequestError(
                503, f"too many requests wait for {model}", "retry shortly", {"Retry-After": "1"}
            ) from None
        except BtError as error:
            status = 404 if ("no checkpoint directory" in error.message or "was not found" in error.message) else 422
            raise RequestError(status, error.message, error.hint) from None

    def sources_of(images: list[ImageIn]) -> list[ImageSource]:
        return [ImageSource(i.name, data=decode_data(i.data, settings.max_image_bytes, i.name)) for i in images]

    def answer(records, outcome: Outcome, reporter: Collected) -> dict:
        return {
            "records": [asdict(r) for r in records],
            "skipped": [asdict(s) for s in outcome.skipped],
            "messages": reporter.messages,
        }

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "models": sorted(pool.models)}

    @app.get("/v1/models")
    def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "owned_by": "bt"} for name in sorted(pool.models)],
        }

    @app.post("/v1/score")
    def score(body: ScoreIn) -> dict:
        from ..tasks import pairs

        sources, outcome, reporter = sources_of(body.images), Outcome(), Collected()

        def work(runtime):
            return list(pairs.score(runtime, sources, list(body.texts), outcome, _batch(runtime), body.top_k, reporter))

        return answer(run(body.model, ("itm",), work), outcome, reporter)

    @app.post("/v1/fill-mask")
    def fill_mask(body: FillMaskIn) -> dict:
        from ..tasks import pairs

        sources, outcome, reporter = sources_of(body.images), Outcome(), Collected()

        def work(runtime):
            records = pairs.fill_mask(
                runtime, sources, list(body.texts), outcome, _batch(runtime), body.top_k, body.targets, reporter
            )
            return list(records)

        return answer(run(body.model, ("mlm",), work), outcome, reporter)

    @app.post("/v1/embed")
    def embed(body: EmbedIn) -> dict:
        from ..tasks import pairs

        sources, outcome, reporter = sources_of(body.images), Outcome(), Collected()

        def work(runtime):
            return list(pairs.embed(runtime, body.kind, outcome, sources, list(body.texts), _batch(runtime), reporter))

        return answer(run(body.model, ("itc",), work), outcome, reporter)

    @app.post("/v1/retrieve")
    def retrieve(body: RetrieveIn) -> dict:
        from ..tasks import retrieve as retrieval

        outcome, reporter = Outcome(), Collected()
        needs, preferred = retrieval_heads(body.rerank_k)
        if body.image is not None:
            (source,) = sources_of([body.image])

            def work(runtime):
                return retrieval.retrieve_texts(
                    runtime, source, list(body.texts), body.top_k, body.rerank_k, _batch(runtime), reporter
                )

            return answer(run(body.model, needs, work, preferred), outcome, reporter)
        if body.query is None or not body.sources:
            raise RequestError(422, "a retrieve request needs a query and sources, or an image and texts")
        paths = [allowed(p, "source") for p in body.sources]
        index = allowed(body.index, "index") if body.index else None
        folders = [p for p in paths if p.is_dir()]
        named = [str(p) for p in paths] if body.refresh else [str(p) for p in paths if not p.is_dir()]
        try:
            sources = expand_image_sources(named) if named else []
        except BtError as error:
            raise RequestError(422, error.message, error.hint) from None

        def work(runtime):
            return retrieval.retrieve_images(
                runtime,
                body.query,
                sources,
                outcome,
                folders,
                index,
                body.rebuild,
                body.top_k,
                body.rerank_k,
                _batch(runtime),
                reporter,
                refresh=body.refresh,
            )

        return answer(run(body.model, needs, work, preferred), outcome, reporter)

    def allowed(path: str, what: str) -> Path:
        resolved = Path(path).resolve()
        if not any(resolved == root or root in resolved.parents for root in settings.allow_paths):
            raise RequestError(
                403, f"the {what} {path} is outside the server's --allow-path roots", "see bt serve --help"
            )
        return resolved

    def _batch(runtime) -> int:
        return settings.batch_size or runtime.default_batch_size

    @app.post("/v1/embeddings")
    def embeddings(body: EmbeddingsIn) -> dict:
        from ..tasks import pairs

        inputs = [body.input] if isinstance(body.input, str) else list(body.input)
        if not inputs:
            raise RequestError(422, "input is empty")
        outcome = Outcome()
        if body.modality == "image":
            sources = [
                ImageSource(f"input[{k}]", data=decode_data(x, settings.max_image_bytes, f"input[{k}]"))
                for k, x in enumerate(inputs)
            ]
        else:
            sources = []

        def work(runtime):
            texts = inputs if body.modality == "text" else []
            records = list(pairs.embed(runtime, body.modality, outcome, sources, texts, _batch(runtime)))
            tokens = sum(len(ids) for ids in runtime.tokenize(texts)[0]) if texts else 0
            return records, tokens

        records, tokens = run(body.model, ("itc",), work)
        if outcome.skipped:
            raise RequestError(422, f"{outcome.skipped[0].name}: {outcome.skipped[0].reason}")
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": k, "embedding": r.embedding} for k, r in enumerate(records)],
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.post("/v1/rerank")
    def rerank(body: RerankIn) -> dict:
        from ..tasks.batching import encode_image_batches, encode_text_batches

        outcome, reporter = Outcome(), Reporter()
        if body.query.startswith("data:image/"):  # an image query ranks text documents
            query = ImageSource("query", data=decode_data(body.query, settings.max_image_bytes, "query"))

            def work(runtime):
                batches = list(encode_image_batches(runtime, [query], 1, outcome, reporter))
                if not batches:
                    return []
                texts = encode_text_batches(runtime, list(body.documents), _batch(runtime), reporter)
                return runtime.match_scores([(text, batches[0][0][1]) for text in texts], _batch(runtime))

        else:  # a text query ranks image documents
            documents = [
                ImageSource(f"documents[{k}]", data=decode_data(d, settings.max_image_bytes, f"documents[{k}]"))
                for k, d in enumerate(body.documents)
            ]

            def work(runtime):
                (text,) = encode_text_batches(runtime, [body.query], 1, reporter)
                images = [
                    s for b in encode_image_batches(runtime, documents, _batch(runtime), outcome, reporter) for s in b
                ]
                return runtime.match_scores([(text, image) for _, image in images], _batch(runtime))

        scores = run(body.model, ("itm",), work)
        if outcome.skipped:
            raise RequestError(422, f"{outcome.skipped[0].name}: {outcome.skipped[0].reason}")
        results = [{"index": k, "relevance_score": probability} for k, (_, probability) in enumerate(scores)]
        results.sort(key=lambda r: r["relevance_score"], reverse=True)
        return {"results": results[: body.top_n], "model": body.model}

    return app


def _error(error: RequestError) -> JSONResponse:
    body = {"error": error.message}
    if error.hint:
        body["hint"] = error.hint
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def __getattr__(name: str):
    """``bridgetower_cli.server:app`` for ASGI runners (uvicorn --workers N, gunicorn -k uvicorn.workers...)."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
