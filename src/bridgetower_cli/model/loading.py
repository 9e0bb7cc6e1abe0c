"""Checkpoint resolution and loading: one BridgeTower backbone plus whichever heads the checkpoint holds."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import BridgeTowerConfig, BridgeTowerModel, BridgeTowerProcessor
from transformers.models.bridgetower.modeling_bridgetower import (
    BridgeTowerContrastiveHead,
    BridgeTowerITMHead,
    BridgeTowerMLMHead,
    BridgeTowerPreTrainedModel,
)
from transformers.utils import logging as hf_logging

from ..errors import BtError
from .catalog import HEAD_WEIGHTS, checkpoint_with, require_heads
from .hub import check_architecture, weight_files


class BridgeTowerWithHeads(BridgeTowerPreTrainedModel):
    """The stock backbone with any subset of the ITM, MLM and ITC heads, under their stock weight names."""

    _tied_weights_keys = {"mlm_score.decoder.weight": "bridgetower.text_model.embeddings.word_embeddings.weight"}

    def __init__(self, config: BridgeTowerConfig, heads: tuple[str, ...] = ()):
        super().__init__(config)
        self.heads = tuple(heads)
        self.bridgetower = BridgeTowerModel(config)
        if "itm" in heads:
            self.itm_score = BridgeTowerITMHead(config.hidden_size * 2)
        if "mlm" in heads:
            self.mlm_score = BridgeTowerMLMHead(config)
        if "itc" in heads:
            size = config.contrastive_hidden_size
            self.itc_text_head = BridgeTowerContrastiveHead(config.hidden_size, size)
            self.itc_image_head = BridgeTowerContrastiveHead(config.hidden_size, size)
            self.itc_cross_modal_head = BridgeTowerContrastiveHead(config.hidden_size * 2, size)
            self.logit_scale = nn.Parameter(torch.tensor(getattr(config, "logit_scale_init_value", 2.6592)))
        self.post_init()


@dataclass
class LoadedModel:
    """A loaded checkpoint: ``name`` (as the user gave it; records carry it), where it was read from, the network
    (backbone + heads), its processor, and where it runs."""

    name: str
    path: Path
    network: BridgeTowerWithHeads
    processor: BridgeTowerProcessor
    device: torch.device
    dtype: torch.dtype
    precision: str = "float32"  # float32, bfloat16, float16 or int8 (``PRECISIONS``)

    @property
    def heads(self) -> tuple[str, ...]:
        return self.network.heads


def select_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise BtError(f"unknown device {name!r}", "use auto, cpu, cuda, cuda:N or mps")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BtError("CUDA is not available on this machine", "use --device cpu (or auto)")
        if (device.index or 0) >= torch.cuda.device_count():
            raise BtError(
                f"no {name}: this machine has {torch.cuda.device_count()} CUDA device(s)", "use --device cuda:0"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BtError("MPS is not available on this machine", "use --device cpu (or auto)")
    return device


# What each --dtype runs in: its name (records and indexes carry it) and the dtype the weights load in (int8 graphs
# are built from the float32 weights).
PRECISIONS = {
    "auto": ("float32", torch.float32),
    "float32": ("float32", torch.float32),
    "bfloat16": ("bfloat16", torch.bfloat16),
    "float16": ("float16", torch.float16),
    "int8": ("int8", torch.float32),
}


def select_precision(name: str) -> tuple[str, torch.dtype]:
    """``auto`` is float32 on every device: the numbers of the stock classes. bfloat16 is opt-in (faster on GPUs,
    logits move by a few hundredths, enough to swap close rankings); int8 (CPUs, ONNX Runtime) likewise."""
    if name not in PRECISIONS:
        raise BtError(f"unknown dtype {name!r}", "use auto, float32, bfloat16, float16 or int8")
    return PRECISIONS[name]


def weight_names(path: Path) -> set[str]:
    """The tensor names stored in a checkpoint directory, read without loading any tensor data."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            return set(json.loads((path / index).read_text())["weight_map"])
    files = weight_files(path)
    if not files:
        raise BtError(f"{path} holds no model weights", "a checkpoint has model.safetensors or pytorch_model.bin")
    names: set[str] = set()
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as handle:
                names.update(handle.keys())
        else:
            names.update(read_pickled_state(file, map_location="meta"))
    return names


def read_pickled_state(file: Path, map_location: str = "cpu") -> dict:
    """A ``torch.save``d state dict, unpickled with ``weights_only`` (tensors and plain containers, never code).
    Zip files are memory-mapped; the legacy (pre-1.6, non-zip) format is read whole."""
    import pickle
    import zipfile

    try:
        return torch.load(file, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(file))
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        reason = f"it calls {found.group(1)}" if found else str(error).splitlines()[0]
        raise BtError(
            f"refusing to load {file}: it is not plain weights ({reason})",
            "only tensors are unpickled (weights_only); get the checkpoint from a trusted source or as safetensors",
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise BtError(f"cannot read {file}: {error}", "re-download the checkpoint") from None


def heads_in(path: Path, config: BridgeTowerConfig) -> tuple[str, ...]:
    names = weight_names(path)
    heads = [head for head, required in HEAD_WEIGHTS.items() if all(name in names for name in required)]
    usable_itc = getattr(config, "contrastive_hidden_size", None) is not None
    # The stock contrastive class raises with separate per-layer transforms: no ITC there either.
    if "itc" in heads and not (usable_itc and config.share_cross_modal_transformer_layers):
        heads.remove("itc")
    return tuple(heads)


def _check_supported(config: BridgeTowerConfig, needs: tuple[str, ...]) -> None:
    if "itc" in needs and not config.share_cross_modal_transformer_layers:
        raise BtError(
            "ITC embeddings are undefined for share_cross_modal_transformer_layers=False (transformers raises)",
            f"use a checkpoint such as {checkpoint_with('itc')}",
        )
    if config.share_link_tower_layers:
        raise BtError(
            "share_link_tower_layers=True: transformers itself cannot run this config (TypeError upstream)",
            "no public BridgeTower checkpoint uses it; use one of `bt models`",
        )
    if config.vision_config.remove_last_layer:
        raise BtError("this checkpoint sets vision remove_last_layer=True, which the BridgeTower forward cannot run")


def read_config(path: Path, model: str) -> BridgeTowerConfig:
    """The checkpoint's BridgeTowerConfig (``hub.check_architecture`` has refused any other architecture)."""
    check_architecture(path, model)
    try:
        return BridgeTowerConfig.from_pretrained(path)
    except (OSError, ValueError, TypeError) as error:
        raise BtError(
            f"{model} is not a BridgeTower checkpoint: {error}", "point --model at a checkpoint directory"
        ) from None


def processor_image_size(path: Path, config: BridgeTowerConfig) -> int:
    """The image size of a checkpoint without a transformers 5 processor config: its preprocessor_config.json
    ``size`` (an integer in the public large repos), else the vision config's (the public base repos)."""
    try:
        size = json.loads((path / "preprocessor_config.json").read_text()).get("size")
    except (OSError, ValueError, AttributeError):
        size = None
    if isinstance(size, dict):
        size = size.get("shortest_edge")
    return size if isinstance(size, int) and size > 0 else config.vision_config.image_size


def load_processor(path: Path, config: BridgeTowerConfig) -> BridgeTowerProcessor:
    """The checkpoint's processor. A transformers 5 one (processor_config.json, or an image processor config naming
    its type) loads as saved; for the public checkpoints it is assembled as transformers 4.x read their files: the
    RoBERTa tokenizer from tokenizer.json, and the image processor resizing the shortest edge to the checkpoint's
    size and centre-cropping to the same (PIL backend, as 4.x's image processor)."""
    try:
        saved = json.loads((path / "preprocessor_config.json").read_text())
    except (OSError, ValueError):
        saved = {}
    if (path / "processor_config.json").is_file() or "image_processor_type" in saved:
        return BridgeTowerProcessor.from_pretrained(path)
    from transformers import BridgeTowerImageProcessorPil, RobertaTokenizer

    size = {"shortest_edge": processor_image_size(path, config)}
    image_processor = BridgeTowerImageProcessorPil(size=size, crop_size=size, size_divisor=32)
    return BridgeTowerProcessor(image_processor, RobertaTokenizer.from_pretrained(path))


def load_model(
    path: Path,
    name: str,
    device: str = "auto",
    dtype: str = "auto",
    needs: tuple[str, ...] = (),
    preferred: tuple[str, ...] = (),
    threads: int | None = None,
) -> LoadedModel:
    """Load the checkpoint at ``path`` (see ``hub.resolve_checkpoint``; ``name`` is how the user named it): one
    backbone plus every head it holds; refuse if a head in ``needs`` is missing (the hint names a public checkpoint
    with ``needs`` and ``preferred``). ``threads`` sets PyTorch's CPU threads."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch_device = select_device(device)
    precision, torch_dtype = select_precision(dtype)
    if precision == "int8" and torch_device.type != "cpu":
        raise BtError("--dtype int8 runs on CPUs (ONNX Runtime)", "on a GPU use --dtype bfloat16 or float16")
    if threads:
        torch.set_num_threads(threads)
    config = read_config(path, name)
    _check_supported(config, needs)
    heads = heads_in(path, config)
    require_heads(heads, needs, name, preferred)
    try:
        network, info = BridgeTowerWithHeads.from_pretrained(
            path, config=config, heads=heads, dtype=torch_dtype, output_loading_info=True
        )
        processor = load_processor(path, config)
    except (OSError, ValueError) as error:
        raise BtError(f"cannot load {name}: {error}", "is it a complete BridgeTower checkpoint?") from None
    if info["missing_keys"]:
        missing = ", ".join(sorted(info["missing_keys"])[:3])
        raise BtError(
            f"{name} lacks weights ({missing}, ...): refusing to run with random ones", "re-download the checkpoint"
        )
    if torch_device.type == "cuda" and torch_dtype == torch.float32:
        # Exact float32: no TF32 in convolutions (cuDNN's default) or matmuls.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    network.eval().to(torch_device)
    return LoadedModel(name, path, network, processor, torch_device, torch_dtype, precision)
