"""The commands' work as library calls: batching over the runtime, plain result records out."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import BtError, InputError
from .hub import fingerprint
from .index import EmbeddingIndex, RefreshStats, content_hash, default_index_path, file_states
from .inputs import ImageSource, fit_aspect, load_image
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
from .runtime import Fused, ImageStates, Runtime, TextStates

Score = tuple[float, float]  # ITM (match logit, match probability)


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


def warn_padded(reporter: Reporter, name: str) -> None:
    reporter.warn(
        f"{name} is too elongated for the image processor: padded to a wider frame", kind="elongated images padded"
    )


def read_images(
    runtime: Runtime, sources: Sequence[ImageSource], outcome: Outcome, reporter: Reporter, keep: dict | None = None
) -> Iterator[tuple[ImageSource, torch.Tensor]]:
    """Pixel values per readable source; unreadable ones are reported and recorded as skipped. ``keep`` collects
    the RGB image the model sees, by source name."""
    for source in sources:
        try:
            image, padded = fit_aspect(load_image(source), runtime.image_size)
            if keep is not None:
                keep[source.name] = image
            if padded:
                warn_padded(reporter, source.name)
            yield source, runtime.pixel_values(image)
        except InputError as error:
            outcome.skipped.append(Skipped(source.name, error.message))
            reporter.skipped(source.name, error.message)


def encode_image_batches(
    runtime: Runtime,
    sources: Sequence[ImageSource],
    batch_size: int,
    outcome: Outcome,
    reporter: Reporter,
    keep_images: dict | None = None,
) -> Iterator[list[tuple[ImageSource, ImageStates]]]:
    """Read, preprocess and encode images, ``batch_size`` at a time; bad images are skipped (``keep_images``: see
    ``read_images``)."""
    batch: list[tuple[ImageSource, torch.Tensor]] = []

    def flush():
        states = runtime.encode_images(torch.stack([pixels for _, pixels in batch]))
        return [(source, state) for (source, _), state in zip(batch, states)]

    for item in read_images(runtime, sources, outcome, reporter, keep_images):
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
    pending: dict[str, list[ScoreRecord]] = {}
    with reporter.progress(len(sources) * len(texts), "scoring pairs") as advance:
        for batch in encode_image_batches(runtime, sources, batch_size, outcome, reporter):
            pairs = [(source, image, j) for source, image in batch for j in range(len(texts))]
            for chunk in chunks(pairs, batch_size):
                scores = runtime.match_scores([(text_states[j], image) for _, image, j in chunk], batch_size)
                for (source, _, j), (logit, probability) in zip(chunk, scores):
                    pending.setdefault(source.name, []).append(ScoreRecord(source.name, texts[j], logit, probability))
                advance(len(chunk))
                for name in [name for name, records in pending.items() if len(records) == len(texts)]:
                    yield from best_first(pending.pop(name))[:top_k]


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


def _embedded_locally(runtime, todo, hashes: dict, batch_size: int, outcome: Outcome, reporter: Reporter):
    """Batches of (rows, failures) for the index, embedded in this process."""
    for chunk in chunks(todo, batch_size):
        state_of = {source.name: state for source, state in chunk}
        skipped_before = len(outcome.skipped)
        rows = []
        for batch in encode_image_batches(runtime, [s for s, _ in chunk], batch_size, outcome, reporter):
            for source, image in batch:
                state = state_of[source.name]
                digest = hashes.get(state.path) or content_hash(state.path)
                rows.append((state, digest, image.itc_embedding.float().cpu().tolist()))
        yield rows, [(state_of[s.name], s.reason) for s in outcome.skipped[skipped_before:]]


def _embedded_by(engine, todo, batch_size: int, outcome: Outcome, reporter: Reporter):
    """Batches of (rows, failures) for the index, embedded by ``engine`` (Ray), reported as the local engine does."""
    state_of = {source.path: (source, state) for source, state in todo}
    for batch in engine.embed([source for source, _ in todo], batch_size):
        rows, failures = [], []
        for item in batch:
            source, state = state_of[item.path]
            if item.padded:
                warn_padded(reporter, source.name)
            if item.error:
                outcome.skipped.append(Skipped(source.name, item.error))
                reporter.skipped(source.name, item.error)
                failures.append((state, item.error))
            else:
                rows.append((state, item.hash, item.embedding.tolist()))
        yield rows, failures


def open_index(runtime: Runtime, index_file: Path | None = None, rebuild: bool = False) -> EmbeddingIndex:
    """The embedding index for the loaded checkpoint (``index_file``, else the default path)."""
    loaded = runtime.loaded
    dim = loaded.network.config.contrastive_hidden_size
    return EmbeddingIndex(index_file or default_index_path(), fingerprint(loaded.path), dim, rebuild, loaded.name)


def refresh_index(
    runtime: Runtime,
    index: EmbeddingIndex,
    sources: Sequence[ImageSource],
    outcome: Outcome,
    folders: Sequence[Path] = (),
    batch_size: int = 8,
    reporter: Reporter | None = None,
    engine=None,
) -> RefreshStats:
    """Bring the index up to date for ``sources``: new and changed files indexed (a file whose content is already
    indexed, moved or renamed, reuses that embedding), rows of files gone from ``folders`` dropped. Each batch is
    committed on its own, so an interrupted refresh keeps what it finished. ``engine`` (``engines.RayEngine``)
    embeds on Ray instead of ``runtime``."""
    reporter = reporter or Reporter()
    states = file_states(source.path for source in sources)
    plan = index.plan(states, folders)
    hashes = {}
    for state in plan.to_embed:
        with contextlib.suppress(OSError):  # unreadable: embedding it fails and records why
            hashes[state.path] = content_hash(state.path)
    known = index.slots_of(hashes.values())
    reused = [
        (state, hashes[state.path], known[hashes[state.path]])
        for state in plan.to_embed
        if hashes.get(state.path) in known
    ]
    index.link(reused)
    index.drop(plan.to_drop)
    stats = RefreshStats(len(plan.to_embed) - plan.changed, plan.changed, len(plan.to_drop), plan.unchanged)
    stats.reused = len(reused)
    pending = {state.path for state in plan.to_embed} - {state.path for state, _, _ in reused}
    todo = [(source, state) for source, state in zip(sources, states) if state.path in pending]
    batches = (
        _embedded_locally(runtime, todo, hashes, batch_size, outcome, reporter)
        if engine is None
        else _embedded_by(engine, todo, batch_size, outcome, reporter)
    )
    with reporter.progress(len(todo), "indexing images") as advance:
        for rows, failures in batches:
            index.store(rows, failures)
            stats.failed += len(failures)
            advance(len(rows) + len(failures))
    index.maintain()
    return stats


def two_stage(
    similarities: np.ndarray | None,
    count: int,
    top_k: int,
    rerank_k: int,
    rescore: Callable[[list[int]], dict[int, Score]],
) -> list[tuple[int, float | None, Score | None]]:
    """Hits as (item, similarity, ITM score or None): the ``rerank_k`` most similar items rescored by ``rescore`` and
    ordered by match probability, then the next ones by similarity, ``top_k`` in all. Without similarities (no ITC
    heads) every item is rescored."""
    if similarities is None:
        shortlist, rest = list(range(count)), []
    else:
        best = min(count, max(rerank_k, top_k))
        top = np.argpartition(-similarities, best - 1)[:best] if 0 < best < count else np.arange(count)
        order = top[np.argsort(-similarities[top], kind="stable")].tolist()
        shortlist, rest = order[:rerank_k], order[rerank_k:top_k]
    scores = rescore(shortlist) if shortlist else {}
    reranked = sorted(scores, key=lambda item: scores[item][1], reverse=True)

    def similarity(item: int) -> float | None:
        return None if similarities is None else float(similarities[item])

    hits = [(item, similarity(item), scores[item]) for item in reranked]
    return (hits + [(item, similarity(item), None) for item in rest])[:top_k]


def _records(hits, image_of, text_of) -> list[RetrievalRecord]:
    return [
        RetrievalRecord(rank, image_of(item), text_of(item), similarity, *(score or (None, None)))
        for rank, (item, similarity, score) in enumerate(hits, start=1)
    ]


def display_name(path: str, folders: Sequence[Path]) -> str:
    """How a walk of ``folders`` names ``path``: the folder as given, then the path inside it."""
    for folder in folders:
        root = os.path.join(os.path.abspath(folder), "")
        if path.startswith(root):
            return os.path.join(str(folder), path[len(root) :])
    return path


def retrieve_images(
    runtime: Runtime,
    query: str | ImageSource,
    sources: Sequence[ImageSource],
    outcome: Outcome,
    folders: Sequence[Path] = (),
    index_file: Path | None = None,
    rebuild: bool = False,
    top_k: int = 10,
    rerank_k: int = 5,
    batch_size: int = 8,
    reporter: Reporter | None = None,
    refresh: bool = True,
) -> list[RetrievalRecord]:
    """Rank images for a text, or for an image (ITC image-image similarity, no rerank). With ITC heads: similarity
    over the index, refreshed for ``sources`` first unless ``refresh`` is off (then every indexed file under
    ``folders``, and the ``sources`` named, as the index holds them), then the ITM head reranks a text query's best
    ``rerank_k``. Without ITC heads: every image is scored by ITM. The query is encoded once either way."""
    reporter = reporter or Reporter()
    if isinstance(query, ImageSource):
        batches = list(encode_image_batches(runtime, [query], 1, outcome, reporter))
        if not batches:
            raise BtError(f"cannot use {query.name}: {outcome.skipped[-1].reason}", "check the image")
        query_embedding, text, rerank_k = batches[0][0][1].itc_embedding, None, 0
    else:
        (text,) = encode_text_batches(runtime, [query], 1, reporter)
        query_embedding = text.itc_embedding
    if "itc" in runtime.loaded.heads:
        index = open_index(runtime, index_file, rebuild)
        try:
            if refresh:
                reporter.info(refresh_index(runtime, index, sources, outcome, folders, batch_size, reporter).line())
            query_vector = query_embedding.float().cpu().numpy()
            want = max(top_k, rerank_k)
            paths, similarities = index.search(query_vector, want, folders, [source.path for source in sources])
        finally:
            index.close()
        if not paths and refresh:
            raise BtError("none of the images could be indexed", "see the warnings above")
        if not paths:
            raise BtError("none of the images are in the index", "drop --no-refresh to index them")
        by_path = {source.path: source for source in sources}
        candidates = [by_path.get(p) or ImageSource(display_name(p, folders), path=p) for p in paths]
    else:
        reporter.warn("this checkpoint has no ITC heads: scoring every image with the ITM head (slow)")
        candidates, similarities = list(sources), None

    def rescore(shortlist: list[int]) -> dict[int, Score]:
        chosen = [candidates[item] for item in shortlist]
        item_of = {source.name: item for item, source in zip(shortlist, chosen)}
        scores = {}
        with reporter.progress(len(chosen), "reranking images") as advance:
            for batch in encode_image_batches(runtime, chosen, batch_size, outcome, reporter):
                pairs = [(text, image) for _, image in batch]
                for (source, _), itm in zip(batch, runtime.match_scores(pairs, batch_size)):
                    scores[item_of[source.name]] = itm
                advance(len(batch))
        return scores

    hits = two_stage(similarities, len(candidates), top_k, rerank_k, rescore)
    return _records(hits, lambda item: candidates[item].name, lambda item: None)


def retrieve_texts(
    runtime: Runtime,
    source: ImageSource,
    texts: list[str],
    top_k: int = 10,
    rerank_k: int = 5,
    batch_size: int = 8,
    reporter: Reporter | None = None,
) -> list[RetrievalRecord]:
    """Rank texts for an image: the vision tower runs once; ITC similarity shortlists, ITM reranks ``rerank_k``.

    Without ITC heads every text is scored by ITM."""
    reporter = reporter or Reporter()
    outcome = Outcome()
    batches = list(encode_image_batches(runtime, [source], 1, outcome, reporter))
    if not batches:
        raise BtError(f"cannot use {source.name}: {outcome.skipped[0].reason}", "check the image")
    ((_, image),) = batches[0]
    states = encode_text_batches(runtime, texts, batch_size, reporter)
    similarities = None
    if image.itc_embedding is None:
        reporter.warn("this checkpoint has no ITC heads: scoring every text with the ITM head (slow)")
    else:
        matrix = torch.stack([state.itc_embedding for state in states]).float().cpu().numpy()
        similarities = matrix @ image.itc_embedding.float().cpu().numpy()

    def rescore(shortlist: list[int]) -> dict[int, Score]:
        with reporter.progress(len(shortlist), "reranking texts") as advance:
            scores = runtime.match_scores([(states[item], image) for item in shortlist], batch_size)
            advance(len(shortlist))
        return dict(zip(shortlist, scores))

    hits = two_stage(similarities, len(texts), top_k, rerank_k, rescore)
    return _records(hits, lambda item: None, lambda item: texts[item])
