"""Build real-architecture BridgeTower checkpoints offline, with random weights.

The directory written holds what a hub checkpoint holds: ``config.json``, ``model.safetensors``, a byte-level BPE
RoBERTa tokenizer trained here on a small caption corpus, and the processor configuration. Every stock
transformers BridgeTower class loads it with ``from_pretrained``. ``tiny`` is for tests (seconds); ``base`` has
the shapes of ``BridgeTower/bridgetower-base`` and serves the benchmarks.

    python -m bridgetower_cli.testing OUT_DIR --size tiny --heads itm,mlm,itc
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

HEADS = ("itm", "mlm", "itc")

SIZES = {
    "tiny": {
        "image_size": 64,
        "patch_size": 16,
        "hidden_size": 64,
        "heads": 2,
        "text_layers": 4,
        "vision_layers": 4,
        "cross_layers": 2,
        "intermediate_size": 128,
        "vocab_size": 600,
        "tokenizer_vocab": 600,
        "contrastive_size": 32,
    },
    "base": {
        "image_size": 288,
        "patch_size": 16,
        "hidden_size": 768,
        "heads": 12,
        "text_layers": 12,
        "vision_layers": 12,
        "cross_layers": 6,
        "intermediate_size": 3072,
        "vocab_size": 50265,
        "tokenizer_vocab": 2000,
        "contrastive_size": 512,
    },
}

_SUBJECTS = [
    "a cat",
    "two cats",
    "a dog",
    "an astronaut",
    "a rocket",
    "a cup of coffee",
    "a man",
    "a woman",
    "a child",
    "a football player",
    "a bird",
    "a horse",
    "a camera",
    "a car",
    "a train",
    "a boat",
]
_VERBS = [
    "sitting on",
    "lying on",
    "looking out of",
    "standing next to",
    "flying over",
    "holding",
    "near",
    "in front of",
    "on top of",
    "under",
    "running across",
    "sleeping on",
]
_PLACES = [
    "a couch",
    "the window",
    "a table",
    "the beach",
    "a field",
    "the sky",
    "a street",
    "a saucer",
    "the launch pad",
    "a white wall",
    "the grass",
    "a wooden floor",
    "a snowy mountain",
    "the water",
]


def caption_corpus() -> list[str]:
    """A deterministic English caption corpus for training the tokenizer."""
    lines = [f"{s} {v} {p}." for s, v, p in itertools.product(_SUBJECTS, _VERBS, _PLACES)]
    lines += [line.capitalize() for line in lines[::7]]
    lines += ["A photo of a tabby cat, a grey camera, a red rocket and a hot drink!", "Numbers 0 1 2 3 4 5 6 7 8 9"]
    return lines


def build_tokenizer(vocab_size: int):
    """Train a byte-level BPE on the caption corpus and wrap it as a RobertaTokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(caption_corpus(), vocab_size=vocab_size, min_frequency=1, special_tokens=specials)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return RobertaTokenizer(vocab=model["vocab"], merges=merges, model_max_length=512)


def build_config(size: str = "tiny", heads: tuple[str, ...] = HEADS, **overrides):
    """A BridgeTowerConfig of the given size; ``overrides`` set top-level config fields."""
    from transformers import BridgeTowerConfig

    s = SIZES[size]
    architectures = {
        "itc": "BridgeTowerForContrastiveLearning",
        "itm": "BridgeTowerForImageAndTextRetrieval",
        "mlm": "BridgeTowerForMaskedLM",
    }
    fields = {
        "hidden_size": s["hidden_size"],
        "num_attention_heads": s["heads"],
        "num_hidden_layers": s["cross_layers"],
        "architectures": [architectures[h] for h in HEADS if h in heads] or ["BridgeTowerModel"],
        "text_config": {
            "hidden_size": s["hidden_size"],
            "num_hidden_layers": s["text_layers"],
            "num_attention_heads": s["heads"],
            "intermediate_size": s["intermediate_size"],
            "vocab_size": s["vocab_size"],
        },
        "vision_config": {
            "hidden_size": s["hidden_size"],
            "num_hidden_layers": s["vision_layers"],
            "patch_size": s["patch_size"],
            "image_size": s["image_size"],
        },
    }
    if "itc" in heads:
        fields |= {"contrastive_hidden_size": s["contrastive_size"], "logit_scale_init_value": 2.6592}
    return BridgeTowerConfig(**(fields | overrides))


def build_checkpoint(
    out_dir: str | Path,
    size: str = "tiny",
    heads: tuple[str, ...] | list[str] = HEADS,
    seed: int = 0,
    **overrides,
) -> Path:
    """Write a loadable BridgeTower checkpoint holding ``heads`` (any subset of itm, mlm, itc)."""
    import torch
    from safetensors.torch import save_file
    from transformers import BridgeTowerImageProcessorPil, BridgeTowerProcessor

    from .loading import BridgeTowerWithHeads

    unknown = set(heads) - set(HEADS)
    if unknown:
        raise ValueError(f"unknown heads: {sorted(unknown)}")
    heads = tuple(h for h in HEADS if h in heads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = build_config(size, heads, **overrides)

    torch.manual_seed(seed)
    model = BridgeTowerWithHeads(config, heads=heads)
    with torch.no_grad():
        # Perturb every parameter so that no LayerNorm is the identity and no bias is zero.
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)

    s = SIZES[size]
    image_processor = BridgeTowerImageProcessorPil(
        size={"shortest_edge": s["image_size"]}, crop_size={"shortest_edge": s["image_size"]}, size_divisor=32
    )
    BridgeTowerProcessor(image_processor, build_tokenizer(s["tokenizer_vocab"])).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bridgetower_cli.testing", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", help="directory to write the checkpoint to")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--heads", default="itm,mlm,itc", help="comma-separated subset of itm,mlm,itc ('' = none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    heads = tuple(h for h in args.heads.split(",") if h)
    bad = set(heads) - set(HEADS)
    if bad:
        parser.error(f"unknown heads: {', '.join(sorted(bad))} (choose from itm, mlm, itc)")
    print(build_checkpoint(args.out_dir, args.size, heads, args.seed))


if __name__ == "__main__":
    main()
