"""The commands' work as library calls: batching over the runtime, plain result records out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .errors import BtError, InputError
from .inputs import ImageSource, load_image
from .records import Candidate, EmbeddingRecord, FillMaskRecord, Outcome, Reporter, ScoreRecord, Skipped
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


def mask_positions(runtime: Runtime, texts: list[str]) -> list[list[int]]:
    """Token positions of the ``<mask>`` tokens in each text; a text without one is an error."""
    mask = runtime.tokenizer.mask_token
    ids, _ = runtime.tokenize(texts)
    positions = []
    for text, token_ids in zip(texts, ids):
        if mask not in text:
            hint = f"write {mask} (not [MASK])" if "[MASK]" in text else f"mark the words to predict with {mask}"
            raise BtError(f"no {mask} in text {text!r}", hint)
        found = [k for k, token in enumerate(token_ids) if token == runtime.tokenizer.mask_token_id]
        if not found:
            raise BtError(f"the {mask} in {text[:40]!r}... lies beyond the model's token limit", "shorten the text")
        positions.append(found)
    return positions


def target_ids(runtime: Runtime, targets: list[str], reporter: Reporter) -> list[int]:
    """Token ids of ``--targets`` words, as a word after a space (the fill-mask pipeline's first-token rule)."""
    ids = []
    for word in targets:
        tokens = runtime.tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
        if not tokens:
            raise BtError(f"target {word!r} is empty", "give words separated by commas")
        if len(tokens) > 1:
            first = runtime.tokenizer.decode(tokens[:1]).strip()
            reporter.warn(f"target {word!r} is several tokens; using its first, {first!r}")
        ids.append(tokens[0])
    return list(dict.fromkeys(ids))


def fill_mask(
    runtime: Runtime,
    sources: Sequence[ImageSource],
    texts: list[str],
    batch_size: int = 8,
    top_k: int = 5,
    targets: list[str] | None = None,
    reporter: Reporter | None = None,
) -> Outcome:
    """Masked-word predictions conditioned on each image: every mask's top-k candidates (softmax over the vocabulary,
    restricted to ``targets`` when given) and the text with each mask filled by its best candidate."""
    reporter = reporter or Reporter()
    outcome = Outcome()
    positions = mask_positions(runtime, texts)
    allowed = target_ids(runtime, targets, reporter) if targets else None
    text_states = encode_text_batches(runtime, texts, batch_size, reporter)
    decode = runtime.tokenizer.decode
    with reporter.progress(len(sources) * len(texts), "filling masks") as advance:
        for batch in encode_image_batches(runtime, sources, batch_size, outcome, reporter):
            pairs = [(source, image, j) for source, image in batch for j in range(len(texts))]
            for chunk in chunks(pairs, batch_size):
                fused = runtime.fuse([text_states[j] for _, _, j in chunk], [image for _, image, _ in chunk])
                for k, (source, _, j) in enumerate(chunk):
                    probabilities = runtime.mlm_logits(fused, k, positions[j]).float().softmax(dim=-1).cpu()
                    ids = torch.tensor(allowed) if allowed else torch.arange(probabilities.shape[-1])
                    scores, order = probabilities[:, ids].topk(min(top_k, len(ids)), dim=-1)
                    masks = [
                        [Candidate(int(ids[o]), decode([int(ids[o])]).strip(), float(s)) for s, o in zip(row, rows)]
                        for row, rows in zip(scores, order)
                    ]
                    filled = text_states[j].input_ids.cpu().clone()
                    filled[positions[j]] = torch.tensor([candidates[0].token for candidates in masks])
                    sequence = decode(filled.tolist(), skip_special_tokens=True).strip()
                    outcome.records.append(FillMaskRecord(source.name, texts[j], sequence, masks))
                advance(len(chunk))
    if not outcome.records:
        raise BtError("none of the images could be read", "see the warnings above")
    return outcome


EMBEDDING_KINDS = ("image", "text", "cross")


def embed(
    runtime: Runtime,
    kind: str,
    sources: Sequence[ImageSource] = (),
    texts: Sequence[str] = (),
    batch_size: int = 8,
    outcome: Outcome | None = None,
    reporter: Reporter | None = None,
) -> Iterator[EmbeddingRecord]:
    """ITC embeddings, yielded as they are computed: ``image`` and ``text`` from the unimodal passes alone (no
    cross-modal layers), ``cross`` from the fused (image, text) pairs. Skipped images go to ``outcome.skipped``."""
    reporter = reporter or Reporter()
    outcome = outcome if outcome is not None else Outcome()
    name = runtime.loaded.name

    def record(image, text, vector):
        values = vector.float().cpu().tolist()
        return EmbeddingRecord(image, text, kind, name, len(values), values)

    if kind == "text":
        with reporter.progress(len(texts), "embedding texts") as advance:
            for batch in chunks(list(texts), batch_size):
                for text, state in zip(batch, encode_text_batches(runtime, list(batch), batch_size, reporter)):
                    yield record(None, text, state.itc_embedding)
                advance(len(batch))
        return
    text_states = encode_text_batches(runtime, list(texts), batch_size, reporter) if kind == "cross" else []
    total = len(sources) * (len(texts) if kind == "cross" else 1)
    with reporter.progress(total, f"embedding {kind}") as advance:
        for batch in encode_image_batches(runtime, sources, batch_size, outcome, reporter):
            if kind == "image":
                for source, state in batch:
                    yield record(source.name, None, state.itc_embedding)
                advance(len(batch))
                continue
            pairs = [(source, image, j) for source, image in batch for j in range(len(texts))]
            for chunk in chunks(pairs, batch_size):
                fused = runtime.fuse([text_states[j] for _, _, j in chunk], [image for _, image, _ in chunk])
                for (source, _, j), vector in zip(chunk, runtime.cross_embeddings(fused)):
                    yield record(source.name, texts[j], vector)
                advance(len(chunk))
