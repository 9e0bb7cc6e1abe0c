"""The reference: transformers' own classes, used the way their documentation uses them."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerProcessor,
)


@cache
def processor(path: Path) -> BridgeTowerProcessor:
    """The checkpoint's processor. transformers 5 cannot load the public checkpoints' processor files; for those it
    is built as transformers 4.x built it: ``BridgeTowerImageProcessor(**preprocessor_config.json)`` (an integer
    ``size``: resize the shortest edge to it and centre-crop to the same; its default was 288, the base models'
    size, which is the vision config's size here) and the RoBERTa tokenizer from tokenizer.json."""
    if (path / "processor_config.json").is_file():
        return BridgeTowerProcessor.from_pretrained(path)
    from transformers import BridgeTowerConfig, BridgeTowerImageProcessorPil, RobertaTokenizer

    size = json.loads((path / "preprocessor_config.json").read_text()).get("size")
    size = {"shortest_edge": size or BridgeTowerConfig.from_pretrained(path).vision_config.image_size}
    image_processor = BridgeTowerImageProcessorPil(size=size, crop_size=size, size_divisor=32)
    return BridgeTowerProcessor(image_processor, RobertaTokenizer.from_pretrained(path))


@cache
def stock(cls, path: Path):
    return cls.from_pretrained(path).eval()


def rgb(path) -> Image.Image:
    return Image.open(path).convert("RGB")


@torch.no_grad()
def itm_logits(path: Path, image: Image.Image, text: str) -> torch.Tensor:
    """The documented loop for one pair: processor(image, text) then the ITM class; logits [2]."""
    encoding = processor(path)(image, text, return_tensors="pt")
    return stock(BridgeTowerForImageAndTextRetrieval, path)(**encoding).logits[0]


@torch.no_grad()
def mlm_logits(path: Path, image: Image.Image, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM logits [length, vocab] and the input ids, for one pair."""
    encoding = processor(path)(image, text, return_tensors="pt")
    return stock(BridgeTowerForMaskedLM, path)(**encoding).logits[0], encoding["input_ids"][0]


@torch.no_grad()
def contrastive(path: Path, image: Image.Image, text: str):
    """The stock contrastive output (text_embeds, image_embeds, cross_embeds) for one pair."""
    encoding = processor(path)(image, text, return_tensors="pt")
    return stock(BridgeTowerForContrastiveLearning, path)(**encoding)
