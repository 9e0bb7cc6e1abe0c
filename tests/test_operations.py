"""Adding an operation is a request type declared in the table, its task and its record: with nothing else, the
Python API runs it in process, a server answers it at its route, and a client of that server runs it there (the
README's "Adding a capability", done here in one file)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from conftest import DEVICE
from helpers import served

import bridgetower_cli as bt_api
from bridgetower_cli.operations import OPERATIONS
from bridgetower_cli.operations.requests import Cost, images_given, texts_given
from bridgetower_cli.operations.table import operation
from bridgetower_cli.records import Record
from bridgetower_cli.sources import ImageSource

pytestmark = pytest.mark.slow


@dataclass
class TokensRecord(Record):
    image: str
    text: str
    tokens: int
    probability: float


def count_tokens(runtime, q, outcome, reporter, batch_size):
    """The task: each pair's ITM probability, and how many tokens its text has."""
    from bridgetower_cli.tasks import pairs

    lengths = {text: len(ids) for text, ids in zip(q.texts, runtime.tokenize(q.texts)[0])}
    for record in pairs.score(runtime, q.images, q.texts, outcome, batch_size, None, reporter):
        yield TokensRecord(record.image, record.text, lengths[record.text], record.probability)


@dataclass
class Tokens:
    images: list[ImageSource]
    texts: list[str]

    def __post_init__(self):
        texts_given(self.texts, "tokens")
        images_given(self.images, "tokens")

    def cost(self) -> Cost:
        return Cost(len(self.images) * len(self.texts), images=len(self.images), texts=len(self.texts))


@pytest.fixture(scope="module", autouse=True)
def declared():
    """The declaration, as ``@operation`` above the class would make it (here only while this module's tests run, so
    the rest of the session's table and servers are without it)."""
    operation("tokens", TokensRecord, "tokens", "/v1/tokens", lambda q: (("itm",), ()), count_tokens)(Tokens)
    yield
    OPERATIONS.pop(Tokens)


@pytest.fixture(scope="module")
def url(full_checkpoint):
    pytest.importorskip("fastapi")
    from bridgetower_cli.server import Settings, create_app

    with served(create_app(Settings(models=[str(full_checkpoint)], device=DEVICE))) as address:
        yield address


def test_a_new_operation_runs_everywhere(full_checkpoint, samples, url):
    images = [ImageSource(str(samples / name), path=str(samples / name)) for name in ("cat.jpg", "rocket.jpg")]
    request = Tokens(images, ["two cats on a couch", "a rocket"])
    here = bt_api.load(str(full_checkpoint), device=DEVICE).run(request)
    there = bt_api.load(str(full_checkpoint), device=DEVICE, server=url).run(request)
    scored = bt_api.load(str(full_checkpoint), device=DEVICE).score(images[0].path, request.texts)
    assert len(here) == 4 and [r.to_dict() for r in there] == [r.to_dict() for r in here]
    probability = {r.text: r.probability for r in scored}
    assert all(abs(r.probability - probability[r.text]) <= 1e-5 for r in here if r.image == images[0].name)
    assert all(r.tokens == len(runtime_tokens(full_checkpoint, r.text)) for r in here)
    with pytest.raises(bt_api.BtError, match="no images given to tokens"):
        Tokens([], ["a cat"])


def runtime_tokens(checkpoint, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(checkpoint))(text)["input_ids"]
