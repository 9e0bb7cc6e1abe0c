"""The commands' work as library calls: batching over the runtime, plain result records out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .errors import BtError, InputError
from .inputs import ImageSource, load_image
from .records import Outcome, Reporter, ScoreRecord, Skipped
from .runtime import ImageStates, Runtime, TextStates


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def encode_text_batches(runtime: Runtime, texts: list[str], batch_size: int, reporter: Reporter) -> list[TextStates]:
    states: list[TextStates] = []
    for batch in chunks(texts, batch_size):
        states += runtime.encode_texts(list(batch))
    for text, state in zip(texts, states):
        if state.truncated:
            reporter.warn(f"text truncated to {runtime.max_length} tokens: {text[:40]!r}...")
    return states


def read_images(
    runtime: Runtime, sources: Sequence[ImageSource], outcome: Outcome, reporter: Reporter
) -> Iterator[tuple[ImageSource, torch.Tensor]]:
    """Pixel values per readable source; unreadable ones are reported and recorded as skipped."""
    for source in sources:
        try:
            yield source, runtime.pixel_values(load_image(source))
        except InputError as error:
            outcome.skipped.append(Skipped(source.name, error.message))
            reporter.skipped(source.name, error.message)


def encode_image_batches(
    runtime: Runtime, sources: Sequence[ImageSource], batch_size: int, outcome: Outcome, reporter: Reporter
) -> Iterator[list[tuple[ImageSource, ImageStates]]]:
    """Read, preprocess and encode images, ``batch_size`` at a time; bad images are skipped."""
    batch: list[tuple[ImageSource, torch.Tensor]] = []

    def flush():
        states = runtime.encode_images(torch.stack([pixels for _, pixels in batch]))
        return [(source, state) for (source, _), state in zip(batch, states)]

    for item in read_images(runtime, sources, outcome, reporter):
        batch.append(item)
        if len(batch) == batch_size:
            yield flush()
            batch = []
    if batch:
        yield flush()


def score(
    runtime: Runtime,
    sources: Sequence[ImageSource],
    texts: list[str],
    batch_size: int = 8,
    top_k: int | None = None,
    reporter: Reporter | None = None,
) -> Outcome:
    """ITM scores for every (image, text) pair: each image and each text encoded once, then fused per pair.

    Records come grouped by image (in input order), best text first; ``top_k`` keeps the best k per image.
    """
    reporter = reporter or Reporter()
    outcome = Outcome()
    text_states = encode_text_batches(runtime, texts, batch_size, reporter)
    per_image: dict[str, list[ScoreRecord]] = {}
    with reporter.progress(len(sources) * len(texts), "scoring pairs") as advance:
        for batch in encode_image_batches(runtime, sources, batch_size, outcome, reporter):
            pairs = [(source, image, j) for source, image in batch for j in range(len(texts))]
            for chunk in chunks(pairs, batch_size):
                fused = runtime.fuse([text_states[j] for _, _, j in chunk], [image for _, image, _ in chunk])
                logits = runtime.itm_logits(fused).float()
                probabilities = logits.softmax(dim=-1)[:, 1]
                for (source, _, j), logit, probability in zip(chunk, logits[:, 1].tolist(), probabilities.tolist()):
                    per_image.setdefault(source.name, []).append(ScoreRecord(source.name, texts[j], logit, probability))
                advance(len(chunk))
    if not per_image:
        raise BtError("none of the images could be read", "see the warnings above")
    for records in per_image.values():
        records.sort(key=lambda r: r.logit, reverse=True)
        outcome.records += records[:top_k] if top_k else records
    return outcome
