"""The public BridgeTower checkpoints bt knows about (no torch import: used by help and hints)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BtError, UsageError


@dataclass(frozen=True)
class Checkpoint:
    id: str
    heads: tuple[str, ...]
    image_size: int


KNOWN_CHECKPOINTS = (
    Checkpoint("BridgeTower/bridgetower-base", (), 288),
    Checkpoint("BridgeTower/bridgetower-base-itm-mlm", ("itm", "mlm"), 288),
    Checkpoint("BridgeTower/bridgetower-large-itm-mlm", ("itm", "mlm"), 294),
    Checkpoint("BridgeTower/bridgetower-large-itm-mlm-itc", ("itm", "mlm", "itc"), 294),
)
DEFAULT_MATCHING_MODEL = "BridgeTower/bridgetower-base-itm-mlm"
DEFAULT_CONTRASTIVE_MODEL = "BridgeTower/bridgetower-large-itm-mlm-itc"

HEAD_DESCRIPTIONS = {
    "itm": "image-text matching (ITM)",
    "mlm": "masked language modelling (MLM)",
    "itc": "contrastive embedding (ITC)",
}


def checkpoint_with(*heads: str) -> str:
    """The smallest public checkpoint holding every one of ``heads``."""
    return next(c.id for c in KNOWN_CHECKPOINTS if set(heads) <= set(c.heads))


def classify_heads(method: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The heads a classification method needs, and those it works best with (``auto``: ITC, else ITM)."""
    return {"itc": (("itc",), ()), "itm": (("itm",), ()), "rerank": (("itc", "itm"), ()), "auto": ((), ("itc",))}[
        method
    ]


def retrieval_heads(rerank_k: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The heads retrieval needs, and those it works best with. Ranking by ITC similarity alone (``rerank_k`` 0)
    needs the ITC heads; reranking needs ITM, and uses ITC for the shortlist when the checkpoint has it (without,
    every candidate is scored by ITM)."""
    return (("itc",), ("itc",)) if rerank_k == 0 else (("itm",), ("itm", "itc"))


DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")


def check_device(device) -> str:
    """A device name bt knows (checked before any model loads: a typo is a usage error)."""
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise UsageError(f"{device!r} is not a device", "use auto, cpu, cuda, cuda:N or mps")
    return device


def check_dtype(dtype) -> str:
    if dtype not in DTYPES:
        raise UsageError(f"{dtype!r} is not a dtype", f"use one of: {', '.join(DTYPES)}")
    return dtype


# The weight names that prove a head is in a checkpoint (all of them must be there).
HEAD_WEIGHTS = {
    "itm": ("itm_score.fc.weight", "itm_score.fc.bias"),
    "mlm": ("mlm_score.transform.dense.weight", "mlm_score.decoder.weight", "mlm_score.bias"),
    "itc": (
        "itc_text_head.fc.weight",
        "itc_image_head.fc.weight",
        "itc_cross_modal_head.fc.weight",
        "logit_scale",
    ),
}


def require_heads(
    available: tuple[str, ...], needed: tuple[str, ...], name: str, preferred: tuple[str, ...] = ()
) -> None:
    """Refuse a checkpoint that lacks a head in ``needed``, naming a public checkpoint that holds every head in
    ``needed`` and ``preferred``."""
    missing = [head for head in needed if head not in available]
    if missing:
        have = ", ".join(available) or "no heads"
        heads = " or ".join(f"{HEAD_DESCRIPTIONS[head]} head" for head in missing)
        raise BtError(
            f"{name} has no {heads} (it holds {have})",
            f"use a checkpoint that has it, e.g. --model {checkpoint_with(*needed, *preferred)}",
        )


def target_tokens(encode, decode, longest: int, word: str) -> list[int]:
    """A fill-mask target's token ids as a word after a space (the fill-mask pipeline's first-token rule), by the
    checkpoint's tokenizer (``encode``: text to ids, no special tokens; ``decode``: ids to text), whichever library
    reads it. Only the first token counts, and no token spans more than ``longest`` characters: a cut beyond that
    keeps the first token and whether there are more, so a 20-million-character "word" costs nothing."""
    ids = encode(" " + word.strip()[: longest + 1])
    if not ids or not decode(ids[:1]).strip():
        raise BtError(
            f"target {word[:40]!r} is not a word this model's vocabulary starts", "give words separated by commas"
        )
    return ids
