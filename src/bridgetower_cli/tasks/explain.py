"""``bt explain``: Grad-CAM over the cross-attention of one fusion layer, as LAVIS computes it for BLIP
(``compute_gradcam``): the ITM match logit of one (image, text) pair, the text stream's cross-attention
probabilities ``A`` [heads, text tokens, 1 + patches] at layer L and their gradient ``G`` from that logit;
``cam = A[..., 1:] * clamp(G[..., 1:], min=0)`` averaged over heads and laid out on the patch grid. The text's map is
the mean over its real tokens (CLS and SEP excluded); each token has its own.

The image and text passes run once each (the runtime's cached states); only the fused part is differentiated,
one pair's graph at a time, as one model call (``Runtime.gradcam``: on a server, a job on the model's worker).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..errors import BtError
from ..model.runtime import Runtime
from ..records import ExplainRecord, Outcome, Reporter, TokenMap
from ..sources import ImageSource
from .batching import encode_image_batches, encode_text_batches


def default_layer(runtime: Runtime) -> int:
    """The middle of the fusion stack, ``num_hidden_layers // 2 - 1`` (ALBEF's choice: index 2 of 6). At the last
    layer only the text CLS reaches the ITM head, so the word maps would be zero there."""
    return max(0, runtime.fusion_layers // 2 - 1)


def check_layer(runtime: Runtime, layer: int | None) -> int:
    layers = runtime.fusion_layers
    chosen = default_layer(runtime) if layer is None else layer
    if not 0 <= chosen < layers:
        raise BtError(
            f"--layer {layer} is out of range: this checkpoint has {layers} fusion layers", f"use 0..{layers - 1}"
        )
    return chosen


def explain(
    runtime: Runtime,
    sources: Sequence[ImageSource],
    texts: list[str],
    outcome: Outcome,
    layer: int | None = None,
    batch_size: int = 8,
    reporter: Reporter | None = None,
) -> Iterator[tuple[ExplainRecord, object]]:
    """Per (image, text): the record (raw maps, before any normalisation) and the RGB image the model saw."""
    reporter = reporter or Reporter()
    if "itm" not in runtime.loaded.heads:
        raise BtError(f"{runtime.loaded.name} has no image-text matching (ITM) head", "use an ITM checkpoint")
    layer = check_layer(runtime, layer)
    text_states = encode_text_batches(runtime, texts, batch_size, reporter)
    decode = runtime.tokenizer.decode
    images = {}
    with reporter.progress(len(sources) * len(texts), "explaining pairs") as advance:
        for batch in encode_image_batches(runtime, sources, batch_size, outcome, reporter, keep_images=images):
            for source, image in batch:
                for text, state in zip(texts, text_states):
                    probability, cams = runtime.gradcam(state, image, layer)
                    words = [
                        TokenMap(decode([int(token)]).strip(), cam.tolist())
                        for token, cam in zip(state.input_ids[1:-1], cams[1:-1])
                    ]
                    record = ExplainRecord(
                        source.name, text, layer, probability, cams[1:-1].mean(dim=0).tolist(), words
                    )
                    yield record, images[id(source)]
                    advance(1)
                images.pop(id(source))


def run_explain(runtime: Runtime, q, outcome: Outcome, reporter: Reporter, batch_size: int) -> Iterator[ExplainRecord]:
    """The ``explain`` operation (``operations.Explain``): the records (the short side images are resized to, for
    drawing them, in ``reporter.meta``)."""
    reporter.meta(image_size=runtime.image_size)
    return (record for record, _ in explain(runtime, q.images, q.texts, outcome, q.layer, batch_size, reporter))
