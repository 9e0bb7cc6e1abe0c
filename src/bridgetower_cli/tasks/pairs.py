"""Per-pair work: ITM scores, masked words and ITC embeddings, each image and each text encoded once."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ..errors import BtError
from ..model.catalog import target_tokens
from ..model.runtime import Runtime
from ..records import Candidate, EmbeddingRecord, FillMaskRecord, Outcome, Reporter, ScoreRecord
from ..sources import ImageSource
from .batching import best_first, chunks, encode_image_batches, encode_text_batches, fused_pairs


def score(
    runtime: Runtime,
    sources: Sequence[ImageSource],
    texts: list[str],
    outcome: Outcome,
    batch_size: int = 8,
    top_k: int | None = None,
    reporter: Reporter | None = None,
) -> Iterator[ScoreRecord]:
    """ITM scores for every (image, text) pair: each image and each text encoded once, then fused per pair.

    Yields each image's records (in input order) as soon as the image is done, best match probability first;
    ``top_k`` keeps the best k per image. Unreadable images go to ``outcome.skipped``.
    """
    reporter = reporter or Reporter()
    text_states = encode_text_batches(runtime, texts, batch_size, reporter)
    pending: dict[int, list[ScoreRecord]] = {}  # by source (two may share a name: a path and a PIL image of it)
    with reporter.progress(len(sources) * len(texts), "scoring pairs") as advance:
        for batch in encode_image_batches(runtime, sources, batch_size, outcome, reporter):
            pairs = [(source, image, j) for source, image in batch for j in range(len(texts))]
            for chunk in chunks(pairs, batch_size):
                scores = runtime.match_scores([(text_states[j], image) for _, image, j in chunk], batch_size)
                for (source, _, j), (logit, probability) in zip(chunk, scores):
                    record = ScoreRecord(source.name, texts[j], logit, probability)
                    pending.setdefault(id(source), []).append(record)
                advance(len(chunk))
                for done in [key for key, records in pending.items() if len(records) == len(texts)]:
                    yield from best_first(pending.pop(done))[:top_k]


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
    tokenizer, ids = runtime.tokenizer, []
    for word in targets:
        tokens = target_tokens(
            lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
            tokenizer.decode,
            runtime.longest_token,
            word,
        )
        if len(tokens) > 1:
            first = runtime.tokenizer.decode(tokens[:1]).strip()
            reporter.warn(f"target {word[:40]!r} is several tokens; using its first, {first!r}")
        ids.append(tokens[0])
    return list(dict.fromkeys(ids))


def fill_mask(
    runtime: Runtime,
    sources: Sequence[ImageSource],
    texts: list[str],
    outcome: Outcome,
    batch_size: int = 8,
    top_k: int = 5,
    targets: list[str] | None = None,
    reporter: Reporter | None = None,
) -> Iterator[FillMaskRecord]:
    """Masked-word predictions conditioned on each image: every mask's top-k candidates (softmax over the vocabulary,
    restricted to ``targets`` when given) and the text with each mask filled by its best candidate. Yields each
    (image, text) record as soon as it is done; unreadable images go to ``outcome.skipped``."""
    reporter = reporter or Reporter()
    positions = mask_positions(runtime, texts)
    allowed = target_ids(runtime, targets, reporter) if targets else None
    text_states = encode_text_batches(runtime, texts, batch_size, reporter)
    decode = runtime.tokenizer.decode
    with reporter.progress(len(sources) * len(texts), "filling masks") as advance:
        for batch in encode_image_batches(runtime, sources, batch_size, outcome, reporter):
            for pairs, fused in fused_pairs(runtime, batch, text_states, batch_size):
                for k, (source, j) in enumerate(pairs):
                    probabilities = runtime.mlm_logits(fused, k, positions[j]).float().softmax(dim=-1).cpu()
                    ids = torch.tensor(allowed) if allowed else torch.arange(probabilities.shape[-1])
                    scores, order = probabilities[:, ids].topk(min(top_k, len(ids)), dim=-1)
                    masks = [
                        [Candidate(int(ids[o]), decode([int(ids[o])]).strip(), float(s)) for s, o in zip(row, rows)]
                        for row, rows in zip(scores, order)
                    ]
                    filled = text_states[j].input_ids.cpu().clone()
                    filled[positions[j]] = torch.tensor([candidates[0].token for candidates in masks])
                    sequence = " ".join(decode(filled.tolist(), skip_special_tokens=True).split())
                    yield FillMaskRecord(source.name, texts[j], sequence, masks)
                advance(len(pairs))


def embed(
    runtime: Runtime,
    kind: str,
    outcome: Outcome,
    sources: Sequence[ImageSource] = (),
    texts: Sequence[str] = (),
    batch_size: int = 8,
    reporter: Reporter | None = None,
) -> Iterator[EmbeddingRecord]:
    """ITC embeddings, yielded as they are computed: ``image`` and ``text`` from the unimodal passes alone (no
    cross-modal layers), ``cross`` from the fused (image, text) pairs. Skipped images go to ``outcome.skipped``."""
    reporter = reporter or Reporter()
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
            for pairs, fused in fused_pairs(runtime, batch, text_states, batch_size):
                for (source, j), vector in zip(pairs, runtime.cross_embeddings(fused)):
                    yield record(source.name, texts[j], vector)
                advance(len(pairs))


def run_score(runtime: Runtime, q, outcome: Outcome, reporter: Reporter, batch_size: int) -> Iterator[ScoreRecord]:
    """The ``score`` operation (``operations.Score``)."""
    return score(runtime, q.images, q.texts, outcome, batch_size, q.top_k, reporter)


def run_fill_mask(runtime: Runtime, q, outcome: Outcome, reporter: Reporter, batch_size: int):
    """The ``fill_mask`` operation (``operations.FillMask``): blank target words left out."""
    words = [word.strip() for word in q.targets if word.strip()] if q.targets is not None else None
    return fill_mask(runtime, q.images, q.texts, outcome, batch_size, q.top_k, words, reporter)


def run_embed(runtime: Runtime, q, outcome: Outcome, reporter: Reporter, batch_size: int):
    """The ``embed`` operation (``operations.Embed``)."""
    return embed(runtime, q.kind, outcome, q.images, q.texts, batch_size, reporter)
