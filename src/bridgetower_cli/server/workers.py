"""The models of a server: each runs on one worker thread of its own, fed by a queue. Model calls from concurrent
requests are serialised there, and their ITM pairs fused together, up to the batch size, within a short window
(micro-batching). Everything else of a request (decoding, preprocessing, tokenizing, ranking) runs on the request's
own thread, through the same task functions as the CLI, so the records are the CLI's.

Every request carries a ``CancelToken``: its client going away, its deadline passing or the server shutting down
stop its work at the next model call (a batch boundary; an index write finishes the transaction it is in)."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cancel import CancelToken
from ..errors import Busy, Cancelled
from .policy import Allowed
from .settings import Settings


@dataclass
class Job:
    """One model call for the worker."""

    function: Any
    args: tuple
    future: Future


@dataclass
class Match:
    """ITM pairs to score, fused with other requests' pairs."""

    pairs: list
    future: Future


def wait(future: Future, token: CancelToken | None):
    """The future's result, waiting no longer than the token allows (a cancelled wait cancels the call if it has not
    started)."""
    while True:
        try:
            return future.result(timeout=0.05)
        except FutureTimeout:
            if token is not None:
                try:
                    token.check()
                except Cancelled:
                    future.cancel()
                    raise


class ModelWorker:
    """Runs a runtime's model calls on one thread. ``match`` requests arriving within ``window_s`` of each other are
    fused together, ``batch_size`` pairs per forward pass."""

    def __init__(self, runtime, batch_size: int, window_s: float):
        self.runtime = runtime
        self.batch_size = batch_size
        self.window_s = window_s
        self.jobs: queue.Queue = queue.Queue()
        self.batches: list[int] = []  # pairs per fused group (for tests and benchmarks)
        self.calls = 0  # model calls run
        self.thread = threading.Thread(target=self._run, name="bt-model", daemon=True)
        self.thread.start()

    def call(self, token: CancelToken | None, function, *args):
        future: Future = Future()
        self.jobs.put(Job(function, args, future))
        return wait(future, token)

    def match(self, token: CancelToken | None, pairs: list) -> list:
        future: Future = Future()
        self.jobs.put(Match(pairs, future))
        return wait(future, token)

    def stop(self, wait_s: float = 0.0) -> None:
        """No more jobs after those queued; ``wait_s``: how long to wait for the thread to finish."""
        self.jobs.put(None)
        if wait_s:
            self.thread.join(timeout=wait_s)

    def _run(self) -> None:
        waiting: list = []
        while True:
            job = waiting.pop(0) if waiting else self.jobs.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue  # its request stopped waiting
            if isinstance(job, Job):
                self.calls += 1
                self._settle(job.future, job.function, *job.args)
                continue
            group, deadline = [job], time.monotonic() + self.window_s
            while sum(len(j.pairs) for j in group) < self.batch_size:
                try:
                    nxt = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if isinstance(nxt, Match) and nxt.future.set_running_or_notify_cancel():
                    group.append(nxt)
                elif nxt is None or isinstance(nxt, Job):
                    waiting.append(nxt)
                    break
            self._match_group(group)

    def _match_group(self, group: list[Match]) -> None:
        pairs = [pair for job in group for pair in job.pairs]
        self.batches.append(len(pairs))
        self.calls += 1
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
    """A runtime as one request sees it: model calls go to the model's worker, checking the request's token first;
    tokenizing and preprocessing run here, on the request's thread. The task functions run unchanged on top.

    Only what is named here is reachable: plain facts about the checkpoint, the CPU work that touches no module,
    and the model calls, each a job on the worker. Nothing else of the shared module is within a request's reach."""

    FACTS = ("loaded", "tokenizer", "image_size", "default_batch_size", "max_length", "longest_token",
             "fusion_layers", "logit_scale", "fast_decode")  # fmt: skip

    def __init__(self, runtime, worker: ModelWorker, token: CancelToken | None = None):
        self._runtime = runtime
        self._worker = worker
        self._token = token

    def __getattr__(self, name: str):
        if name in self.FACTS:
            return getattr(self._runtime, name)
        raise AttributeError(f"{name} is not reachable from a request thread (run it as a worker job)")

    def tokenize(self, texts):
        return self._runtime.tokenize(texts)

    def prepare_image(self, data: bytes):
        if self._token is not None:
            self._token.check()
        return self._runtime.prepare_image(data)

    def gradcam(self, text, image, layer: int):
        """Grad-CAM hooks and differentiates the shared module: one worker job, never beside another model call."""
        return self._call(self._runtime.gradcam, text, image, layer)

    def _call(self, function, *args):
        if self._token is not None:
            self._token.check()
        return self._worker.call(self._token, function, *args)

    def pixel_values(self, image):
        if self._token is not None:
            self._token.check()
        return self._runtime.pixel_values(image)

    def encode_texts(self, texts):
        return self._call(self._runtime.encode_tokens, *self._runtime.tokenize(texts))

    def encode_images(self, pixel_values):
        return self._call(self._runtime.encode_images, pixel_values)

    def fuse(self, texts, images):
        return self._call(self._runtime.fuse, texts, images)

    def mlm_logits(self, fused, pair, positions):
        return self._call(self._runtime.mlm_logits, fused, pair, positions)

    def cross_embeddings(self, fused):
        return self._call(self._runtime.cross_embeddings, fused)

    def match_scores(self, pairs, batch_size):
        """One worker job per batch, so a long rerank stops at the next batch when its request is cancelled."""
        scores = []
        for start in range(0, len(pairs), batch_size):
            if self._token is not None:
                self._token.check()
            scores += self._worker.match(self._token, pairs[start : start + batch_size])
        return scores


@dataclass
class _Model:
    runtime: Any
    worker: ModelWorker
    last_used: float
    shown: str
    in_use: int = 0


@dataclass
class ModelPool:
    """Loaded models by canonical name: loaded on first use (or at start), at most ``max_models`` at once (the
    least recently used idle one is unloaded for another), unloaded after ``keep_alive_s`` idle."""

    settings: Settings
    models: OrderedDict = field(default_factory=OrderedDict)
    waiting: dict = field(default_factory=dict)  # requests admitted per model, running or queued
    tokens: set = field(default_factory=set)  # the tokens of the requests in flight
    cancelled: int = 0  # requests stopped by their token (a client gone, a deadline, shutdown)
    reserved: int = 0  # models being loaded (they count against max_models)
    lock: threading.Lock = field(default_factory=threading.Lock)
    loading: dict = field(default_factory=dict)
    last_request: float = field(default_factory=time.monotonic)  # when the last request came in or ended

    def admit(self, name: str, token: CancelToken) -> None:
        """Count a request in for a model, or refuse it at once (503) when ``max_waiting`` are in already."""
        with self.lock:
            if self.waiting.get(name, 0) >= self.settings.max_waiting:
                raise Busy(f"too many requests wait for {name}", "retry shortly")
            self.waiting[name] = self.waiting.get(name, 0) + 1
            self.tokens.add(token)
            self.last_request = time.monotonic()

    def release(self, name: str, token: CancelToken) -> None:
        with self.lock:
            self.waiting[name] -= 1
            self.tokens.discard(token)
            self.last_request = time.monotonic()
            if token.reason is not None:
                self.cancelled += 1

    @contextlib.contextmanager
    def use(self, model: Allowed, token: CancelToken | None):
        """The model, loaded if need be, as a ServedRuntime for one request."""
        loaded = self._get(model)
        try:
            yield ServedRuntime(loaded.runtime, loaded.worker, token)
        finally:
            with self.lock:
                loaded.in_use -= 1
                loaded.last_used = time.monotonic()

    def _get(self, model: Allowed) -> _Model:
        name = model.name
        with self.lock:
            if name in self.models:
                return self._take(name)
            gate = self.loading.setdefault(name, threading.Lock())
        with gate:  # one load per model; other requests for it wait
            with self.lock:
                if name in self.models:
                    return self._take(name)
                busy = sum(1 for m in self.models.values() if m.in_use)
                if busy + self.reserved >= self.settings.max_models:  # no room even after unloading idle ones
                    slots = self.settings.max_models
                    raise Busy(f"all {slots} model slots are in use", "retry shortly, or raise --max-models")
                self.reserved += 1
            try:
                loaded = self._load(model)  # a load that fails unloads nothing
            finally:
                with self.lock:
                    self.reserved -= 1
            with self.lock:
                self._make_room(keep=self.settings.max_models - 1)
                self.models[name] = loaded
                return self._take(name)

    def _take(self, name: str) -> _Model:
        """(Under the lock.) Mark a model in use and most recently used."""
        model = self.models[name]
        model.in_use += 1
        self.models.move_to_end(name)
        return model

    def _make_room(self, keep: int) -> None:
        """(Under the lock.) Unload the least recently used idle models until at most ``keep`` are loaded (if requests
        hold them all, the pool stays over for as long as they run; the reaper trims it later)."""
        while len(self.models) > keep:
            idle = next((name for name, model in self.models.items() if model.in_use == 0), None)
            if idle is None:
                return
            self.models.pop(idle).worker.stop()

    def _load(self, model: Allowed) -> _Model:
        from ..model import runtime_for
        from ..model.hub import hub_snapshot
        from ..model.loading import load_model

        s = self.settings
        path = hub_snapshot(model.name) if model.hub else Path(model.path or model.name)
        runtime = runtime_for(load_model(path, model.shown, s.device, s.dtype, threads=s.threads))
        runtime.fast_decode = s.fast_decode
        worker = ModelWorker(runtime, s.batch_size or runtime.default_batch_size, s.batch_window_s)
        return _Model(runtime, worker, time.monotonic(), model.shown)

    def idle_s(self) -> float:
        """How long no request has been in flight (0 while one is)."""
        with self.lock:
            return 0.0 if self.tokens else time.monotonic() - self.last_request

    def loaded(self) -> list[_Model]:
        with self.lock:
            return list(self.models.values())

    def unload_idle(self) -> list[str]:
        """Unload the models idle past keep-alive (and, past ``max_models``, the least recently used idle ones)."""
        with self.lock:
            self._make_room(keep=self.settings.max_models)
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

    def cancel_all(self, reason: Cancelled) -> None:
        with self.lock:
            for token in self.tokens:
                token.cancel(reason)

    def close(self, wait_s: float = 10.0) -> None:
        """Stop every request and worker; wait a while for the model calls in progress (threads that cannot finish
        are daemons: they never hold the process)."""
        self.cancel_all(Cancelled("the server is shutting down", "retry when it is back"))
        with self.lock:
            models = list(self.models.values())
            self.models.clear()
        deadline = time.monotonic() + wait_s
        for model in models:
            model.worker.stop(wait_s=max(0.01, deadline - time.monotonic()))
