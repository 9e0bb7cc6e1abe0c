"""``bt doctor``: the facts a bug report needs, like ``hf env``: versions, device, dtype, paths, cached checkpoints."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from importlib import metadata

from ..model.catalog import KNOWN_CHECKPOINTS


@dataclass
class Environment:
    bt: str
    python: str
    platform: str
    torch: str
    transformers: str
    huggingface_hub: str
    onnxruntime: str  # what --dtype int8 runs on (the [int8] extra)
    device: str
    cuda_devices: list[str]
    mps: bool
    dtype: str
    threads: int
    hf_cache: str
    int8_cache: str
    hf_offline: bool
    hf_endpoint: str
    index: str
    index_exists: bool
    cached_checkpoints: list[str]
    environment: dict[str, str]  # the BT_* variables in effect


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(device: str = "auto", dtype: str = "auto") -> Environment:
    import torch
    from huggingface_hub import constants

    from ..index.files import default_index_path
    from ..model.hub import cached_snapshot
    from ..model.int8 import cache_root
    from ..model.loading import select_device, select_precision

    index = default_index_path()
    return Environment(
        bt=_version("bridgetower-cli"),
        python=platform.python_version(),
        platform=platform.platform(),
        torch=torch.__version__,
        transformers=_version("transformers"),
        huggingface_hub=_version("huggingface-hub"),
        onnxruntime=_version("onnxruntime"),
        device=str(select_device(device)),
        cuda_devices=[torch.cuda.get_device_name(k) for k in range(torch.cuda.device_count())],
        mps=torch.backends.mps.is_available(),
        dtype=select_precision(dtype)[0],
        threads=torch.get_num_threads(),
        hf_cache=str(constants.HF_HUB_CACHE),
        int8_cache=str(cache_root()),
        hf_offline=bool(constants.HF_HUB_OFFLINE),
        hf_endpoint=os.environ.get("HF_ENDPOINT", constants.ENDPOINT),
        index=str(index),
        index_exists=index.is_file(),
        cached_checkpoints=[c.id for c in KNOWN_CHECKPOINTS if cached_snapshot(c.id) is not None],
        environment={
            k: ("***" if k == "BT_API_KEY" else v) for k, v in sorted(os.environ.items()) if k.startswith("BT_")
        },
    )
