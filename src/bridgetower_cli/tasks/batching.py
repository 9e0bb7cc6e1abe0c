"""Batching over the runtime, shared by every task: texts and images encoded in batches (unreadable images skipped
and reported), and (image, text) pairs fused in batches."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from .. import cancel
from ..errors import BtError, InputError
from ..images import decode_workers, decoding, taken_at
from ..index.files import Content, bytes_hash
from ..model.runtime import Fused, ImageStates, Runtime, TextStates
from ..reading import current_policy, read_bytes, restricted
from ..records import Outcome, Reporter
from ..sources import ImageSource


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def encode_text_batches(runtime: Runtime, texts: list[str], batch_size: int, reporter: Reporter) -> list[TextStates]:
    states: list[TextStates] = []
    for batch in chunks(texts, batch_size):
        states += runtime.encode_texts(list(batch))
    for text, state in zip(texts, states):
        if state.truncated:
            reporter.warn(f"text truncated to {runtime.max_length} tokens: {text[:40]!r}...", kind="texts truncated")
    return states


def warn_padded(reporter: Reporter, name: str, padded: str) -> None:
    """``padded``: "taller" (a wide image) or "wider" (a tall one)."""
    message = f"{name} is too elongated for the image processor: padded to a {padded} frame"
    reporter.warn(message, kind="elongated images padded")


def read_images(
    runtime: Runtime,
    sources: Sequence[ImageSource],
    outcome: Outcome,
    reporter: Reporter,
    keep: dict | None = None,
    digests: dict | None = None,
) -> Iterator[tuple[ImageSource, torch.Tensor]]:
    """Pixel values per readable source, in order; unreadable ones are reported and recorded as skipped, whatever
    fails on the way (reading, decoding, converting, preprocessing). ``decode_workers()`` threads read and decode
    ahead of the model while it runs (Pillow decodes and resizes without holding the GIL), each image within the
    process's decode budget (a server's). ``keep`` collects the RGB image the model sees, ``digests`` the content
    (hash and EXIF date) of the very bytes decoded (an index binds a row to what it embedded), both by
    ``id(source)``."""

    policy, token = current_policy(), cancel.current()  # (per thread: the decode threads work under this one's)

    def prepare(source: ImageSource):
        with restricted(policy), cancel.watching(token):
            data = read_bytes(source)
            if digests is not None:
                digests[id(source)] = Content(bytes_hash(data), taken_at(data))
            with decoding(data):
                return runtime.prepare_image(data)

    workers = decode_workers()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bt-decode")
    ahead: deque = deque()  # (source, future) in source order, at most two per worker
    remaining = iter(sources)
    try:
        while True:
            cancel.check()
            while len(ahead) < 2 * workers and (source := next(remaining, None)) is not None:
                ahead.append((source, pool.submit(prepare, source)))
            if not ahead:
                return
            source, future = ahead.popleft()
            try:
                image, padded, pixels = future.result()
            except InputError as error:
                outcome.skip(source.name, error.message, reporter)
                continue
            except (BtError, MemoryError):  # (not this image's fault: a busy server, a cancelled request)
                raise
            except Exception as error:  # a decoder's own failure on odd input is this image's problem
                outcome.skip(source.name, f"cannot decode it ({type(error).__name__}: {error})", reporter)
                continue
            if keep is not None:
                keep[id(source)] = image
            if padded:
                warn_padded(reporter, source.name, padded)
            yield source, pixels
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def encode_image_batches(
    runtime: Runtime,
    sources: Sequence[ImageSource],
    batch_size: int,
    outcome: Outcome,
    reporter: Reporter,
    keep_images: dict | None = None,
    digests: dict | None = None,
) -> Iterator[list[tuple[ImageSource, ImageStates]]]:
    """Read, preprocess and encode images, ``batch_size`` at a time; bad images are skipped (``keep_images``,
    ``digests``: see ``read_images``)."""
    batch: list[tuple[ImageSource, torch.Tensor]] = []

    def flush():
        states = runtime.encode_images(torch.stack([pixels for _, pixels in batch]))
        return [(source, state) for (source, _), state in zip(batch, states)]

    for item in read_images(runtime, sources, outcome, reporter, keep_images, digests):
        batch.append(item)
        if len(batch) == batch_size:
            yield flush()
            batch = []
    if batch:
        yield flush()


def fused_pairs(
    runtime: Runtime, batch: list[tuple[ImageSource, ImageStates]], text_states: list[TextStates], batch_size: int
) -> Iterator[tuple[list[tuple[ImageSource, int]], Fused]]:
    """Every image of ``batch`` with every text, fused ``batch_size`` pairs at a time: ((source, text index) per
    pair, the fused batch)."""
    pairs = [(source, image, j) for source, image in batch for j in range(len(text_states))]
    for chunk in chunks(pairs, batch_size):
        fused = runtime.fuse([text_states[j] for _, _, j in chunk], [image for _, image, _ in chunk])
        yield [(source, j) for source, _, j in chunk], fused


def best_first(records: list) -> list:
    """Records in the order of their ITM match probability (softmax over both logits), the highest first."""
    return sorted(records, key=lambda record: record.probability, reverse=True)
