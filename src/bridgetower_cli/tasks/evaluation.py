"""``bt eval``: image-text retrieval recall on a caption set, by the BridgeTower paper's protocol
(``compute_irtr_itm_itc_recall`` in microsoft/BridgeTower's ``src/modules/objectives.py``):

1. ITC similarities ``sims[image, text]`` from the unimodal embeddings;
2. image -> text: each image's ``k_test`` most similar texts are scored by the ITM head (``logits[:, 1]``), -100
   elsewhere; 3. text -> image: likewise for each text's ``k_test`` most similar images;
4. the two matrices merged by element-wise maximum; text retrieval R@K per image (is one of its captions in the
   top K), image retrieval R@K per caption (is its image in the top K), as ``torch.topk`` reads them.

Each image and each caption is encoded once; the ITM head runs once per pair in either top-k list.
"""

from __future__ import annotations

import time

import torch

from ..errors import BtError
from ..model.runtime import Runtime
from ..records import EvalRecord, Outcome, Reporter
from .batching import chunks, encode_image_batches, encode_text_batches
from .captions import CaptionSet, load_caption_set  # noqa: F401  (the caption set evaluated)

UNSCORED = -100.0  # the protocol's score for a pair outside both top-k lists


def recalls(scores: torch.Tensor, text_image: torch.Tensor) -> dict[str, float]:
    """Recall@1/5/10 in percent, read from ``scores[image, text]`` as the BridgeTower code reads them; each one exact
    (hits counted as integers, 100 x hits / count in one division: 20.0, never 20.000000298)."""
    images = torch.arange(scores.shape[0])
    result = {}
    for k in (1, 5, 10):
        top_texts = scores.topk(min(k, scores.shape[1]), dim=1).indices  # [images, k]
        hits = int((text_image[top_texts] == images[:, None]).any(dim=1).sum())
        result[f"txt_r{k}"] = 100 * hits / scores.shape[0]
    for k in (1, 5, 10):
        top_images = scores.topk(min(k, scores.shape[0]), dim=0).indices  # [k, texts]
        hits = int((top_images == text_image[None, :]).any(dim=0).sum())
        result[f"img_r{k}"] = 100 * hits / scores.shape[1]
    result["txt_r_mean"] = (result["txt_r1"] + result["txt_r5"] + result["txt_r10"]) / 3
    result["img_r_mean"] = (result["img_r1"] + result["img_r5"] + result["img_r10"]) / 3
    result["r_mean"] = (result["txt_r_mean"] + result["img_r_mean"]) / 2
    return result


def pairs_to_score(similarities: torch.Tensor | None, k_test: int, shape: tuple[int, int]) -> dict[int, list[int]]:
    """Per image, the texts the ITM head must score: those in the image's top ``k_test`` texts or whose top
    ``k_test`` images hold the image (each pair once). Without similarities, every pair."""
    images, texts = shape
    if similarities is None:
        return {i: list(range(texts)) for i in range(images)}
    wanted = torch.zeros(images, texts, dtype=torch.bool)
    wanted.scatter_(1, similarities.topk(min(k_test, texts), dim=1).indices, True)
    wanted.scatter_(0, similarities.topk(min(k_test, images), dim=0).indices, True)
    return {i: row.nonzero().flatten().tolist() for i, row in enumerate(wanted)}


def protocol_scores(
    runtime: Runtime,
    caption_set: CaptionSet,
    outcome: Outcome,
    k_test: int = 128,
    itc_only: bool = False,
    batch_size: int = 8,
    reporter: Reporter | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The merged score matrix [images, texts], the image (row) of each text, and the number of pairs the ITM head
    scored. Unreadable images go to ``outcome.skipped`` and are left out with their captions."""
    reporter = reporter or Reporter()
    sources = caption_set.sources()
    index_of = {id(source): k for k, source in enumerate(sources)}
    row_of, image_states = {}, []
    with reporter.progress(len(sources), "encoding images") as advance:
        for batch in encode_image_batches(runtime, sources, batch_size, outcome, reporter):
            for source, state in batch:
                row_of[index_of[id(source)]] = len(image_states)
                image_states.append(state)
            advance(len(batch))
    if not image_states:
        raise BtError("none of the images could be read", "check --images: the folder the file names start from")
    kept = [t for t, image in enumerate(caption_set.text_image) if image in row_of]
    text_image = torch.tensor([row_of[caption_set.text_image[t]] for t in kept])
    texts = [caption_set.texts[t] for t in kept]
    with reporter.progress(len(texts), "encoding captions") as advance:
        text_states = []
        for batch in chunks(texts, batch_size):
            text_states += encode_text_batches(runtime, list(batch), batch_size, reporter)
            advance(len(batch))
    similarities = None
    if "itc" in runtime.loaded.heads:
        image_matrix = torch.stack([state.itc_embedding for state in image_states]).float().cpu()
        text_matrix = torch.stack([state.itc_embedding for state in text_states]).float().cpu()
        similarities = image_matrix @ text_matrix.T
    if itc_only:
        return similarities, text_image, 0
    if similarities is None:
        count = len(image_states) * len(texts)
        reporter.warn(
            f"this checkpoint has no ITC heads: scoring all {len(image_states)} x {len(texts)} = {count} pairs "
            f"with the ITM head ({-(-count // batch_size)} fused batches of {batch_size})"
        )
    plan = pairs_to_score(similarities, k_test, (len(image_states), len(texts)))
    scores = torch.full((len(image_states), len(texts)), UNSCORED)
    scored = sum(len(wanted) for wanted in plan.values())
    with reporter.progress(scored, "scoring pairs") as advance:
        for image, wanted in plan.items():
            for chunk in chunks(wanted, batch_size):
                matched = runtime.match_scores([(text_states[t], image_states[image]) for t in chunk], batch_size)
                scores[image, list(chunk)] = torch.tensor([logit for logit, _ in matched])
                advance(len(chunk))
    return scores, text_image, scored


def evaluate(
    runtime: Runtime,
    caption_set: CaptionSet,
    outcome: Outcome,
    k_test: int = 128,
    itc_only: bool = False,
    batch_size: int = 8,
    reporter: Reporter | None = None,
) -> EvalRecord:
    """Recall of ``caption_set`` by the protocol (``itc_only``: ranked by ITC similarity alone)."""
    if itc_only and "itc" not in runtime.loaded.heads:
        raise BtError(f"--itc-only needs ITC heads; {runtime.loaded.name} has none", "drop --itc-only")
    start = time.perf_counter()
    scores, text_image, scored = protocol_scores(runtime, caption_set, outcome, k_test, itc_only, batch_size, reporter)
    protocol = "itc" if itc_only else ("itm+itc" if "itc" in runtime.loaded.heads else "itm")
    return EvalRecord(
        **recalls(scores, text_image),
        images=scores.shape[0],
        texts=scores.shape[1],
        k_test=k_test,
        protocol=protocol,
        pairs_scored=scored,
        model=runtime.loaded.name,
        seconds=round(time.perf_counter() - start, 3),
    )


def run_evaluate(runtime: Runtime, q, outcome: Outcome, reporter: Reporter, batch_size: int) -> EvalRecord:
    """The ``evaluate`` operation (``operations.Evaluate``)."""
    captions = CaptionSet([s.name for s in q.images], q.texts, q.text_image, [s.path for s in q.images])
    return evaluate(runtime, captions, outcome, q.k_test, q.itc_only, batch_size, reporter)
