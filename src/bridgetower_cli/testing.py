"""Build real-architecture BridgeTower checkpoints offline, with random weights.

Two layouts. ``transformers`` (the default) is what transformers 5 writes: ``config.json``, ``model.safetensors``,
a byte-level BPE RoBERTa tokenizer trained here on a small caption corpus, and the processor configuration.
``published`` is what the four public hub repos hold, as transformers 4.26–4.30 wrote them: a config.json without
``model_type`` or ``architectures``, a ``pytorch_model.bin`` (torch.save) with the 4.30 key names (persistent
``position_ids`` buffers; the bare backbone without the ``bridgetower.`` prefix), ``tokenizer.json`` and
``vocab.json`` only, and the repos' preprocessor_config.json (the training configuration in the base repos, the
99-byte ``{"size": 294, ...}`` in the large ones). Every stock transformers BridgeTower model class loads either.

Sizes: ``tiny`` and ``tiny-large`` (the large family's patch 14 and preprocessor style) for tests, in seconds;
``base`` and ``large`` have the shapes of the public checkpoints and serve the benchmarks.

    python -m bridgetower_cli.testing OUT_DIR --size tiny --heads itm,mlm,itc [--layout published]
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
        "family": "base",
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
        "family": "base",
    },
    "large": {
        "image_size": 294,
        "patch_size": 14,
        "hidden_size": 1024,
        "heads": 16,
        "text_layers": 24,
        "vision_layers": 24,
        "cross_layers": 6,
        "intermediate_size": 4096,
        "vocab_size": 50265,
        "tokenizer_vocab": 2000,
        "contrastive_size": 512,
        "family": "large",
    },
}
# The large family's geometry (patch 14 at 294 px: a 21 x 21 grid) at tiny width and depth.
SIZES["tiny-large"] = SIZES["tiny"] | {"image_size": 294, "patch_size": 14, "family": "large"}
LAYOUTS = ("transformers", "published")

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
    bpe.train_from_iterator(
        caption_corpus(), vocab_size=vocab_size, min_frequency=1, special_tokens=specials, show_progress=False
    )
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
    layout: str = "transformers",
    legacy_pickle: bool = False,
    **overrides,
) -> Path:
    """Write a loadable BridgeTower checkpoint holding ``heads`` (any subset of itm, mlm, itc) in ``layout``;
    ``legacy_pickle`` writes a published layout's weights in torch's old (non-zip) serialisation."""
    import torch

    from .model.loading import BridgeTowerWithHeads

    unknown = set(heads) - set(HEADS)
    if unknown:
        raise ValueError(f"unknown heads: {sorted(unknown)}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: choose from {', '.join(LAYOUTS)}")
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
    tokenizer = build_tokenizer(SIZES[size]["tokenizer_vocab"])
    if layout == "published":
        _write_published(out, size, config, heads, state, tokenizer, legacy_pickle)
    else:
        _write_transformers(out, size, config, state, tokenizer)
    return out


def _write_transformers(out: Path, size: str, config, state: dict, tokenizer) -> None:
    from safetensors.torch import save_file
    from transformers import BridgeTowerImageProcessorPil, BridgeTowerProcessor

    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    image_size = SIZES[size]["image_size"]
    image_processor = BridgeTowerImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"shortest_edge": image_size}, size_divisor=32
    )
    BridgeTowerProcessor(image_processor, tokenizer).save_pretrained(out)


def _write_published(
    out: Path, size: str, config, heads: tuple[str, ...], state: dict, tokenizer, legacy_pickle: bool
) -> None:
    """The files of the public hub repos, as transformers 4.26–4.30 wrote them (see the module docstring)."""
    import torch

    s = SIZES[size]
    vision = config.vision_config
    positions = {
        "bridgetower.text_model.embeddings.position_ids": config.text_config.max_position_embeddings,
        "bridgetower.vision_model.visual.embeddings.position_ids": (vision.image_size // vision.patch_size) ** 2 + 1,
    }
    state |= {name: torch.arange(count, dtype=torch.int64).expand((1, -1)).clone() for name, count in positions.items()}
    if not heads:  # the bare backbone
        state = {name.removeprefix("bridgetower."): tensor for name, tensor in state.items()}
    torch.save(state, out / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy_pickle)

    fields = config.to_dict()
    for key in ("model_type", "architectures", "dtype", "_name_or_path"):
        fields.pop(key, None)
    for sub in ("text_config", "vision_config"):
        fields[sub] = {k: v for k, v in fields[sub].items() if k not in ("model_type", "dtype", "_name_or_path")}
    fields |= {
        "text_config_dict": None,
        "vision_config_dict": None,
        "tie_word_embeddings": False,
        "transformers_version": "4.30.0.dev0",
    }
    (out / "config.json").write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")

    if s["family"] == "large":
        preprocessor = {"max_text_len": 50, "size": s["image_size"], "tokenizer": "roberta-large", "vocab_size": 50265}
        text = json.dumps(preprocessor, separators=(", ", ":"))
    else:  # the original training configuration; only one of the two base repos names an image size
        preprocessor = {
            "cache_dir": "/tmp",
            "datasets": ["coco", "vg", "sbu", "gcc"],
            "loss_names": {h: int(h in heads) for h in HEADS},
            "max_text_len": 50,
            "model_type": "bridgetower",
            "tokenizer": "roberta-base",
            "vit": "ViT-B/16",
            "vocab_size": 50265,
            "whole_word_masking": True,
        }
        if heads:
            preprocessor["image_size"] = s["image_size"]
        text = json.dumps(preprocessor, indent=2)
    (out / "preprocessor_config.json").write_text(text)
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    (out / "vocab.json").write_text(json.dumps(tokenizer.get_vocab(), ensure_ascii=False))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bridgetower_cli.testing",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out_dir", help="directory to write the checkpoint to")
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="tiny", help="tiny for tests; base, large: real shapes"
    )
    parser.add_argument("--heads", default="itm,mlm,itc", help="comma-separated subset of itm,mlm,itc ('' = none)")
    parser.add_argument("--seed", type=int, default=0, help="the random weights' seed")
    parser.add_argument(
        "--layout", choices=LAYOUTS, default="transformers", help="published = the files of the public hub repos"
    )
    args = parser.parse_args(argv)
    heads = tuple(h for h in args.heads.split(",") if h)
    bad = set(heads) - set(HEADS)
    if bad:
        parser.error(f"unknown heads: {', '.join(sorted(bad))} (choose from itm, mlm, itc)")
    print(build_checkpoint(args.out_dir, args.size, heads, args.seed, args.layout))


if __name__ == "__main__":
    main()
