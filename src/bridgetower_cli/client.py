"""The CLI as a client of ``bt serve`` (``--server URL``, env ``BT_SERVER``): images go as bytes, records come back
in the CLI's own schemas and are rendered by the same output module. No torch, no transformers: only requests."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from .errors import BtError, InputError
from .records import (
    Candidate,
    EmbeddingRecord,
    FillMaskRecord,
    Outcome,
    Reporter,
    RetrievalRecord,
    ScoreRecord,
    Skipped,
)
from .sources import ImageSource, read_bytes


@dataclass
class Client:
    url: str
    api_key: str | None = None
    timeout_s: float | None = None  # no read timeout: a large job takes as long as it takes

    def post(self, path: str, payload: dict) -> dict:
        import requests

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = self.url.rstrip("/") + path
        try:
            response = requests.post(url, json=payload, headers=headers, timeout=(5, self.timeout_s))
        except requests.ConnectionError:
            raise BtError(
                f"no bt server answers at {self.url}", "start one with `bt serve`, or unset BT_SERVER"
            ) from None
        except requests.RequestException as error:
            raise BtError(f"the request to {self.url} failed: {type(error).__name__}", "is it a bt server?") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            message = body.get("error") if isinstance(body, dict) else None
            raise BtError(
                f"the bt server at {self.url} answered {response.status_code}: {message or response.reason}",
                body.get("hint") if isinstance(body, dict) else None,
            )
        return body


def encoded_images(sources: list[ImageSource], outcome: Outcome, reporter: Reporter) -> list[dict]:
    """Each readable image as {"name", "data" (base64)}; unreadable ones are skipped here, as in-process."""
    images = []
    for source in sources:
        try:
            data = read_bytes(source)
        except InputError as error:
            outcome.skipped.append(Skipped(source.name, error.message))
            reporter.skipped(source.name, error.message)
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
        outcome.skipped.append(Skipped(item["name"], item["reason"]))
        reporter.skipped(item["name"], item["reason"])
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
