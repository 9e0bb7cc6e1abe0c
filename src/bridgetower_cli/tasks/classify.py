"""Zero-shot classification (``bt classify``) and its accuracy on a labelled folder (``bt eval --task
classification``), as CLIP does it: each label in prompt templates, each image and each prompt encoded once.

- ``itc``: a label's embedding is the mean of its prompts' normalised ITC text embeddings, normalised again (CLIP's
  prompt ensembling); its score is ``logit_scale.exp() x cosine`` with the image's ITC embedding, as
  ``BridgeTowerForContrastiveLearning`` scales it.
- ``itm``: a label's score is the ITM match logit of (image, prompt), averaged over the prompts.
- ``rerank``: the ``rerank_k`` best labels by ITC, then scored by ITM; for accuracy, the labels past the shortlist
  rank after it in ITC order (so ``acc5`` means the top five even when ``rerank_k`` is 3).
Probabilities are a softmax of the scores over the labels (the shortlist, for ``rerank``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import BtError
from ..model.runtime import ImageStates, Runtime, TextStates
from ..records import ClassificationEvalRecord, LabelRecord, Outcome, Reporter
from .batching import encode_image_batches, encode_text_batches
from .labels import prompts


@dataclass
class Labels:
    """The labels' prompts encoded once: their text states (label-major), and with ITC heads each label's ensembled
    embedding [labels, dim] and the checkpoint's logit scale."""

    names: list[str]
    templates: list[str]
    states: list[TextStates]
    embeddings: torch.Tensor | None
    scale: float | None

    def prompt_states(self, label: int) -> list[TextStates]:
        count = len(self.templates)
        return self.states[label * count : (label + 1) * count]


def encode_labels(runtime: Runtime, labels: list[str], templates: list[str], batch_size: int, reporter) -> Labels:
    states = encode_text_batches(runtime, prompts(labels, templates), batch_size, reporter)
    if "itc" not in runtime.loaded.heads:
        return Labels(labels, templates, states, None, None)
    vectors = torch.stack([state.itc_embedding for state in states]).float()
    ensembled = vectors.reshape(len(labels), len(templates), -1).mean(dim=1)
    embeddings = torch.nn.functional.normalize(ensembled, dim=-1, p=2)
    return Labels(labels, templates, states, embeddings, runtime.logit_scale)


def resolved_method(runtime: Runtime, method: str) -> str:
    """``auto``: ITC with ITC heads, else ITM (a method the checkpoint's heads cannot serve was refused at load)."""
    if method != "auto":
        return method
    if "itc" in runtime.loaded.heads:
        return "itc"
    if "itm" in runtime.loaded.heads:
        return "itm"
    raise BtError(f"{runtime.loaded.name} has neither ITC nor ITM heads", "use a checkpoint with one of them")


def label_scores(
    runtime: Runtime, image: ImageStates, labels: Labels, method: str, rerank_k: int, batch_size: int
) -> tuple[list[int], torch.Tensor, list[int]]:
    """(the labels scored, their scores, the labels left unscored) for one image: all of them scored, or for
    ``rerank`` the ITC shortlist, the rest left in ITC order (best first)."""
    if method in ("itc", "rerank"):
        itc = labels.scale * (labels.embeddings @ image.itc_embedding.float())
        if method == "itc":
            return list(range(len(labels.names))), itc, []
        by_itc = torch.argsort(itc, descending=True, stable=True).tolist()
        scored, rest = by_itc[:rerank_k], by_itc[rerank_k:]
    else:
        scored, rest = list(range(len(labels.names))), []
    pairs = [(state, image) for label in scored for state in labels.prompt_states(label)]
    logits = torch.tensor([logit for logit, _ in runtime.match_scores(pairs, batch_size)], dtype=torch.float64)
    return scored, logits.reshape(len(scored), len(labels.templates)).mean(dim=1), rest


def classify(runtime: Runtime, q, outcome: Outcome, reporter: Reporter, batch_size: int = 8) -> Iterator[LabelRecord]:
    """The ``classify`` operation (``operations.Classify``): per image (in order, as each is done), its ``top_k``
    labels, the most probable first."""
    sources, labels, templates, top_k, rerank_k = q.images, q.labels, q.templates, q.top_k, q.rerank_k
    method = resolved_method(runtime, q.method)
    encoded = encode_labels(runtime, labels, templates, batch_size, reporter)
    with reporter.progress(len(sources), "classifying images") as advance:
        for batch in encode_image_batches(runtime, sources, batch_size, outcome, reporter):
            for source, image in batch:
                scored, scores, _ = label_scores(runtime, image, encoded, method, rerank_k, batch_size)
                probabilities = scores.double().softmax(dim=0)
                order = sorted(range(len(scored)), key=lambda k: -probabilities[k].item())[:top_k]
                for k in order:
                    label = encoded.names[scored[k]]
                    yield LabelRecord(source.name, label, probabilities[k].item(), scores[k].item())
            advance(len(batch))


def evaluate_classification(
    runtime: Runtime, q, outcome: Outcome, reporter: Reporter, batch_size: int = 8
) -> tuple[ClassificationEvalRecord, list[list[int]]]:
    """CLIP_benchmark's zero-shot metrics (acc1, acc5, mean per-class recall), the recall of each class, and the
    confusion matrix [true][predicted]. An unreadable image is skipped (left out of every count)."""
    start, rerank_k, templates = time.perf_counter(), q.rerank_k, q.templates
    method = resolved_method(runtime, q.method)
    encoded = encode_labels(runtime, q.classes, templates, batch_size, reporter)
    target_of = {id(source): target for source, target in zip(q.images, q.targets)}
    count = len(q.classes)
    confusion = [[0] * count for _ in range(count)]
    top5 = 0
    with reporter.progress(len(q.images), "classifying images") as advance:
        for batch in encode_image_batches(runtime, q.images, batch_size, outcome, reporter):
            for source, image in batch:
                scored, scores, rest = label_scores(runtime, image, encoded, method, rerank_k, batch_size)
                # every label ranked: the scored ones by score, then (rerank) the rest as ITC ordered them
                ranked = [scored[k] for k in torch.argsort(scores, descending=True, stable=True).tolist()] + rest
                truth = target_of[id(source)]
                confusion[truth][ranked[0]] += 1
                top5 += truth in ranked[:5]
            advance(len(batch))
    seen = sum(map(sum, confusion))
    if seen == 0:
        raise BtError("none of the images could be read", "see the warnings above")
    recalls = {q.classes[c]: confusion[c][c] / sum(confusion[c]) for c in range(count) if sum(confusion[c])}
    record = ClassificationEvalRecord(
        acc1=100 * sum(confusion[c][c] for c in range(count)) / seen,
        acc5=100 * top5 / seen,
        mean_per_class_recall=100 * sum(recalls.values()) / len(recalls),
        images=seen,
        classes=count,
        method=method,
        templates=len(templates),
        per_class_recall={label: 100 * recall for label, recall in recalls.items()},
        seconds=round(time.perf_counter() - start, 3),
    )
    return record, confusion


def run_evaluation(runtime: Runtime, q, outcome: Outcome, reporter: Reporter, batch_size: int):
    """The ``evaluate_classification`` operation: the record, and the confusion matrix [true][predicted] beside it
    (``reporter.meta``)."""
    record, confusion = evaluate_classification(runtime, q, outcome, reporter, batch_size)
    reporter.meta(confusion=confusion)
    return record
