"""The CLI as a client of ``bt serve`` (``--server URL``, env ``BT_SERVER``): images go as bytes, records come back
in the CLI's own schemas and are rendered by the same output module. No torch, no transformers: only httpx."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from .errors import BtError, InputError
from .reading import read_bytes
from .records import (
    Candidate,
    EmbeddingRecord,
    FillMaskRecord,
    Outcome,
    Reporter,
    RetrievalRecord,
    ScoreRecord,
)
from .sources import ImageSource

DEFAULT_TIMEOUT_S = 660.0  # a little past the server's default request deadline (10 min), so its 504 comes first


@dataclass
class Client:
    """A bt server at ``url`` (http or https), with its API key; ``timeout_s``: how long to wait for the server's
    next byte (env BT_TIMEOUT)."""

    url: str
    api_key: str | None = None
    timeout_s: float | None = None

    def post(self, path: str, payload: dict) -> dict:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        timeout = httpx.Timeout(self.timeout_s or DEFAULT_TIMEOUT_S, connect=min(10.0, self.timeout_s or 10.0))
        try:
            response = httpx.post(self.url.rstrip("/") + path, json=payload, headers=headers, timeout=timeout)
        except httpx.HTTPError as error:
            raise _failure(self.url, error, timeout.read) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or response.status_code < 400 and "records" not in body and path in BT_PATHS:
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            raise BtError(
                f"{self.url} is not a bt server (it answered {response.status_code} with {kind})",
                "check the URL in --server / BT_SERVER",
            )
        if response.status_code >= 400:
            message = body.get("error") or response.reason_phrase
            raise BtError(f"the bt server at {self.url} answered {response.status_code}: {message}", body.get("hint"))
        return body


BT_PATHS = ("/v1/score", "/v1/fill-mask", "/v1/embed", "/v1/retrieve")


def _failure(url: str, error, timeout_s: float) -> BtError:
    """A transport error as one line that names what failed: DNS, TLS, the connection, or the wait."""
    import ssl

    import httpx

    cause, seen = error, []
    while cause is not None and cause not in seen:
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(e) for e in seen)
    if any(isinstance(e, ssl.SSLError) for e in seen) or "SSL" in text or "TLS" in text:
        return BtError(f"the TLS handshake with {url} failed ({seen[-1]})", "is it https? check the certificate")
    if isinstance(error, httpx.ConnectTimeout):
        return BtError(f"no bt server accepts connections at {url} (connect timed out)", "check the host and port")
    if isinstance(error, httpx.TimeoutException):
        return BtError(
            f"no answer within {timeout_s:g} s from {url}", "raise --timeout (env BT_TIMEOUT), or send less at once"
        )
    if "Name or service not known" in text or "nodename nor servname" in text or "name resolution" in text:
        return BtError(f"cannot resolve the host of {url}", "check the host name in --server / BT_SERVER")
    if isinstance(error, httpx.ConnectError):
        return BtError(f"no bt server answers at {url}", "start one with `bt serve`, or unset BT_SERVER")
    return BtError(f"the request to {url} failed: {type(error).__name__}", "is it a bt server?")


def encoded_images(sources: list[ImageSource], outcome: Outcome, reporter: Reporter) -> list[dict]:
    """Each readable image as {"name", "data" (base64)}; unreadable ones are skipped here, as in-process."""
    images = []
    for source in sources:
        try:
            data = read_bytes(source)
        except InputError as error:
            outcome.skip(source.name, error.message, reporter)
            continue
        images.append({"name": source.name, "data": base64.b64encode(data).decode("ascii")})
    return images


def _received(body: dict, outcome: Outcome, reporter: Reporter) -> list[dict]:
    """The server's messages shown as the CLI would show them; its skips added to ``outcome``."""
    for message in body.get("messages", []):
        if message["level"] == "warning":
            reporter.warn(message["message"], message.get("kind"))
        else:
            reporter.info(message["message"])
    for item in body.get("skipped", []):
        outcome.skip(item["name"], item["reason"], reporter)
    return body.get("records", [])


def score(client: Client, model: str, sources, texts, top_k, outcome: Outcome, reporter: Reporter) -> list:
    images = encoded_images(sources, outcome, reporter)
    body = client.post("/v1/score", {"model": model, "images": images, "texts": texts, "top_k": top_k})
    return [ScoreRecord(**r) for r in _received(body, outcome, reporter)]


def fill_mask(client: Client, model: str, sources, texts, top_k, targets, outcome, reporter) -> list:
    images = encoded_images(sources, outcome, reporter)
    payload = {"model": model, "images": images, "texts": texts, "top_k": top_k, "targets": targets}
    records = _received(client.post("/v1/fill-mask", payload), outcome, reporter)
    return [
        FillMaskRecord(r["image"], r["text"], r["sequence"], [[Candidate(**c) for c in mask] for mask in r["masks"]])
        for r in records
    ]


def embed(client: Client, model: str, kind: str, sources, texts, outcome, reporter) -> list:
    images = encoded_images(sources, outcome, reporter) if kind != "text" else []
    payload = {"model": model, "kind": kind, "images": images, "texts": texts if kind != "image" else []}
    return [EmbeddingRecord(**r) for r in _received(client.post("/v1/embed", payload), outcome, reporter)]


def retrieve(client: Client, model: str, payload: dict, outcome, reporter, image: ImageSource | None = None) -> list:
    payload = {"model": model, **payload}
    if image is not None:
        (payload["image"],) = encoded_images([image], outcome, reporter) or [None]
        if payload["image"] is None:
            raise BtError(f"cannot use {image.name}: {outcome.skipped[0].reason}", "check the image")
    return [RetrievalRecord(**r) for r in _received(client.post("/v1/retrieve", payload), outcome, reporter)]
