"""Finding a checkpoint on disk: a local directory, or a hub id from the local cache, downloaded only when the hub
answers quickly. No torch import here, so a bad --model fails in well under a second."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import BtError

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_HUB_FILES = ["*.json", "*.txt", "*.safetensors"]


def resolve_checkpoint(model: str) -> Path:
    """A local checkpoint directory for ``model`` (a directory, or a hub id: cache first, then a quick download)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BtError(
                f"{model} is not a BridgeTower checkpoint (no config.json)", "point --model at a checkpoint directory"
            )
        return path
    if path.exists() or not _HUB_ID.match(model):
        raise BtError(
            f"no checkpoint directory {model}",
            "pass --model DIR or a hub id such as BridgeTower/bridgetower-base-itm-mlm",
        )
    return _hub_snapshot(model)


def _hub_snapshot(repo_id: str) -> Path:
    import requests
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    cached = cached_snapshot(repo_id)
    if cached is not None:
        return cached
    hint = "download it once where the Hugging Face Hub is reachable, or pass --model DIR"
    if constants.HF_HUB_OFFLINE:
        raise BtError(f"{repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set", hint)
    try:
        response = requests.get(f"{constants.ENDPOINT}/api/models/{repo_id}", timeout=(3, 5))
    except requests.RequestException:
        raise BtError(
            f"{repo_id} is not in the local Hugging Face cache and {constants.ENDPOINT} cannot be reached", hint
        ) from None
    if response.status_code in (401, 403, 404):
        raise BtError(f"{repo_id} was not found on {constants.ENDPOINT}", "check the id; `bt models` lists known ones")
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES, etag_timeout=5))
        if not weight_files(path):
            path = Path(snapshot_download(repo_id, allow_patterns=["*.bin", "*.bin.index.json"], etag_timeout=5))
    except (HfHubHTTPError, OSError, requests.RequestException) as error:
        raise BtError(f"downloading {repo_id} failed: {error}", hint) from None
    return path


def weight_files(path: Path) -> list[Path]:
    for pattern in ("model*.safetensors", "pytorch_model*.bin"):
        found = sorted(path.glob(pattern))
        if found:
            return found
    return []


def cached_snapshot(repo_id: str) -> Path | None:
    """The complete local Hugging Face cache snapshot of a hub checkpoint (config and weights), if any; no network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except LocalEntryNotFoundError:
        return None
    return path if (path / "config.json").is_file() and weight_files(path) else None


def fingerprint(path: Path) -> str:
    """A short id of a checkpoint's contents: its config and, per weight file, the size and the first and last MiB
    (cheap to read; differs between any two trained or random weight sets). Copies of a checkpoint share it."""
    import hashlib

    digest = hashlib.sha256((path / "config.json").read_bytes())
    for file in weight_files(path):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(2**20))
            handle.seek(max(0, size - 2**20))
            digest.update(handle.read(2**20))
    return digest.hexdigest()[:16]
