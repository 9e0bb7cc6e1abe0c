"""Retrieval: images for a text or an image (over the index when the checkpoint has ITC heads), texts for an image;
an ITC shortlist reranked by the ITM head."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import BtError
from ..model.runtime import Runtime
from ..records import Outcome, Reporter, RetrievalRecord
from ..sources import ImageSource
from .batching import encode_image_batches, encode_text_batches
from .indexing import open_index, refresh_index

Score = tuple[float, float]  # ITM (match logit, match probability)


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


def retrieve_images(runtime: Runtime, q, outcome: Outcome, reporter: Reporter, batch_size: int = 8):
    """The ``search`` operation (``operations.Search``, its files and folders found): rank images for a text, or for
    an image (ITC image-image similarity, no rerank). With ITC heads: similarity over the index, refreshed for the
    files first unless ``refresh`` is off (then every indexed file under the folders, and the files named, as the
    index holds them), then the ITM head reranks a text query's best ``rerank_k``. Without ITC heads: every image is
    scored by ITM. The query is encoded once either way."""
    query, sources, folders, top_k, rerank_k = q.query, q.files, q.folders, q.top_k, q.rerank_k
    index_file, rebuild, refresh, wait_s = q.index, q.rebuild, q.refresh, q.wait_s
    if isinstance(query, ImageSource):
        batches = list(encode_image_batches(runtime, [query], 1, outcome, reporter))
        if not batches:
            raise BtError(f"cannot use {query.name}: {outcome.skipped[-1].reason}", "check the image")
        query_embedding, text, rerank_k = batches[0][0][1].itc_embedding, None, 0
    else:
        (text,) = encode_text_batches(runtime, [query], 1, reporter)
        query_embedding = text.itc_embedding
    if "itc" in runtime.loaded.heads:
        with open_index(runtime, index_file, rebuild, write=refresh or rebuild, wait_s=wait_s) as index:
            if refresh:
                reporter.info(refresh_index(runtime, index, sources, outcome, folders, batch_size, reporter).line())
            query_vector = query_embedding.float().cpu().numpy()
            want = max(top_k, rerank_k)
            paths, similarities = index.search(query_vector, want, folders, [s.path for s in sources], q.exact)
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
        item_of = {id(source): item for item, source in zip(shortlist, chosen)}
        scores = {}
        with reporter.progress(len(chosen), "reranking images") as advance:
            for batch in encode_image_batches(runtime, chosen, batch_size, outcome, reporter):
                pairs = [(text, image) for _, image in batch]
                for (source, _), itm in zip(batch, runtime.match_scores(pairs, batch_size)):
                    scores[item_of[id(source)]] = itm
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


def rank_texts(runtime: Runtime, q, outcome: Outcome, reporter: Reporter, batch_size: int) -> list[RetrievalRecord]:
    """The ``rank_texts`` operation (``operations.RankTexts``)."""
    return retrieve_texts(runtime, q.image, q.texts, q.top_k, q.rerank_k, batch_size, reporter)
