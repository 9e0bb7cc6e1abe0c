"""What is known before a model loads: everything the arguments, the files and the checkpoint's config.json already
say cannot run is refused here, in a second and before torch is imported, instead of after the load."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import BtError, UsageError
from ..operations import CheckIndex, Explain, FillMask, Refresh, Search, operation_of
from .base import ModelOptions


def preflight(request, options: ModelOptions, loaded: bool = False) -> None:
    """Refuse a request that cannot run with these options: an index path that is not an index, explain on int8
    graphs (no gradients), CUDA where there is none, a checkpoint without the heads the operation needs, a fusion
    layer the checkpoint does not have. With the model ``loaded`` already, the checkpoint's files are not read again
    (the loaded model answers those questions itself, at no cost)."""
    index = _index_of(request)
    if index is not None:
        from ..index.guard import refuse_foreign

        refuse_foreign(index)
    operation = operation_of(request)
    if not operation.uses_model(request):
        return
    if isinstance(request, Explain) and options.dtype == "int8":
        raise UsageError("bt explain differentiates the model: int8 graphs have no gradients", "use --dtype float32")
    _device_exists(options.device)
    if loaded:
        return
    from ..model.catalog import HEAD_WEIGHTS, require_heads
    from ..model.hub import resolve_checkpoint, stored_weight_names

    path = resolve_checkpoint(options.model, options.revision)
    names = stored_weight_names(path)
    if names is not None:  # (pickled weights: only torch can list them; the load checks them)
        heads = tuple(head for head, required in HEAD_WEIGHTS.items() if all(name in names for name in required))
        needs, preferred = operation.heads(request)
        require_heads(heads, needs, options.model, preferred)
    if isinstance(request, FillMask) and request.targets:
        _targets_start_words(path, request.targets)
    if isinstance(request, Explain) and request.layer is not None:
        layers = json.loads((path / "config.json").read_text()).get("num_hidden_layers", 6)
        if request.layer >= layers:
            raise BtError(
                f"--layer {request.layer} is out of range: this checkpoint has {layers} fusion layers",
                f"use 0..{layers - 1}",
            )


def _index_of(request) -> Path | None:
    """The index file a request opens (its default one when it names none)."""
    if isinstance(request, Refresh):
        return request.path
    if isinstance(request, (Search, CheckIndex)):
        from ..index.files import default_index_path

        return request.index or default_index_path()
    return None


def _device_exists(device: str) -> None:
    """CUDA asked for on a Linux machine with no NVIDIA driver (nor WSL's GPU): said without importing torch."""
    if not device.startswith("cuda") or sys.platform != "linux":
        return
    if not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/dxg")):
        raise BtError("CUDA is not available on this machine", "use --device cpu (or auto)")


def _targets_start_words(path: Path, targets: list[str]) -> None:
    """Each fill-mask target must start with a word of the vocabulary (``model.catalog.target_tokens``, with the
    checkpoint's own tokenizer.json read by the tokenizers library: no torch, no transformers)."""
    file = path / "tokenizer.json"
    if not file.is_file():
        return  # (the load reads the tokenizer another way, and checks them then)
    from tokenizers import Tokenizer

    from ..model.catalog import target_tokens

    tokenizer = Tokenizer.from_file(str(file))
    longest = max(map(len, tokenizer.get_vocab()))
    for word in (word for word in targets if word.strip()):
        target_tokens(
            lambda text: tokenizer.encode(text, add_special_tokens=False).ids, tokenizer.decode, longest, word
        )
