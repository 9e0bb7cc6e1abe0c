"""Finding a checkpoint on disk: a local directory, or a hub id from the local cache, downloaded only when the hub
answers quickly. No torch import here, so a bad --model fails in well under a second."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

from ..errors import BtError

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# What bt reads from a repo: configs, tokenizer files (tokenizer.json, vocab.json, merges.txt, ...) and the weights.
_SIDE_FILES = re.compile(r"[^/]+\.(json|txt)")
_WEIGHTS = (
    re.compile(r"model(-\d+-of-\d+)?\.safetensors(\.index\.json)?"),
    re.compile(r"pytorch_model.*\.bin(\.index\.json)?"),
)


# Keys only BridgeTower's configuration has: how a config.json without "model_type" (the public checkpoints, written
# by transformers 4.26-4.30) is recognised.
BRIDGETOWER_KEYS = ("link_tower_type", "share_link_tower_layers", "share_cross_modal_transformer_layers")


def resolve_checkpoint(model: str, revision: str | None = None) -> Path:
    """A local BridgeTower checkpoint directory for ``model`` (a directory, or a hub id at ``revision``: cache first,
    then a quick download); another architecture is refused here, from its config.json, before torch loads."""
    path = Path(model).expanduser()
    if path.is_dir():
        if revision:
            raise BtError(f"--revision {revision} applies to hub ids; {model} is a local directory", "drop --revision")
        if not (path / "config.json").is_file():
            raise BtError(
                f"{model} is not a BridgeTower checkpoint (no config.json)", "point --model at a checkpoint directory"
            )
        check_architecture(path, model)
        return path
    if path.exists() or not _HUB_ID.match(model):
        raise BtError(f"no checkpoint directory {model}", _did_you_mean(model))
    found = hub_snapshot(model, revision)
    check_architecture(found, model)
    return found


def _did_you_mean(model: str) -> str:
    """The public checkpoint a name that is no path and no hub id probably meant."""
    from .catalog import KNOWN_CHECKPOINTS

    for checkpoint in KNOWN_CHECKPOINTS:
        if checkpoint.id.split("/")[1].lower() == model.strip("/").lower():
            return f"did you mean {checkpoint.id}?"
    return "pass --model DIR or a hub id such as BridgeTower/bridgetower-base-itm-mlm (bt models lists them)"


def check_architecture(path: Path, model: str) -> None:
    """Refuse a checkpoint of another architecture by what its config.json says (no torch, no transformers)."""
    import json

    try:
        fields = json.loads((path / "config.json").read_text())
        model_type = fields.get("model_type")
    except (OSError, ValueError, AttributeError):
        raise BtError(f"{model} has an unreadable config.json", "point --model at a BridgeTower checkpoint") from None
    if model_type is None:
        if not ({"text_config", "vision_config"} <= fields.keys() and any(k in fields for k in BRIDGETOWER_KEYS)):
            raise BtError(
                f"{model} is not a BridgeTower checkpoint (its config.json names no model type and has no "
                "BridgeTower fields)",
                "see `bt models`",
            )
    elif model_type != "bridgetower":
        raise BtError(f"{model} is a {model_type!r} checkpoint, not BridgeTower", "see `bt models`")


def download_command(repo_id: str, revision: str | None = None) -> str:
    """The command that puts ``repo_id`` into the local cache, on a machine that reaches the hub."""
    command = f"hf download {repo_id} --include '*.json' '*.txt' '*.bin' '*.safetensors'"
    return command + (f" --revision {revision}" if revision else "")


def files_to_fetch(repo_files: list[str]) -> list[str]:
    """The files of a repo that bt needs: top-level configs and tokenizer files, and one set of weights
    (safetensors when the repo has them, else the pytorch_model*.bin the public BridgeTower repos hold)."""
    side = [name for name in repo_files if _SIDE_FILES.fullmatch(name)]
    for pattern in _WEIGHTS:
        weights = [name for name in repo_files if pattern.fullmatch(name)]
        if weights:
            return sorted({*side, *weights})
    return []


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot of a hub checkpoint (cache first, then a quick download), never a local folder that
    happens to share its name."""
    import requests
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    cached = cached_snapshot(repo_id, revision)
    if cached is not None:
        return cached
    from .catalog import KNOWN_CHECKPOINTS

    at = f" at revision {revision}" if revision else ""
    hint = f"where the Hugging Face Hub is reachable, run `{download_command(repo_id, revision)}`; or pass --model DIR"
    if repo_id not in {c.id for c in KNOWN_CHECKPOINTS}:  # (bt cannot tell what it is: no download suggested blind)
        hint = "bt runs BridgeTower checkpoints: `bt models` lists the public ones; a local one: --model DIR"
    if constants.HF_HUB_OFFLINE:
        raise BtError(f"{repo_id}{at} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set", hint)
    info_url = f"{constants.ENDPOINT}/api/models/{repo_id}/revision/{quote(revision or 'main', safe='')}"
    try:
        response = requests.get(info_url, timeout=(3, 5))
    except requests.RequestException:
        raise BtError(
            f"{repo_id} is not in the local Hugging Face cache and {constants.ENDPOINT} cannot be reached", hint
        ) from None
    if response.status_code in (401, 403, 404):
        raise BtError(
            f"{repo_id}{at} was not found on {constants.ENDPOINT}",
            "check the id and revision; `bt models` lists known ones",
        )
    try:
        listed = [sibling["rfilename"] for sibling in response.json()["siblings"]]
    except (ValueError, KeyError, TypeError):
        raise BtError(f"{constants.ENDPOINT} gave no file list for {repo_id}", hint) from None
    wanted = files_to_fetch(listed)
    if not wanted:
        raise BtError(
            f"{repo_id}{at} holds no model weights bt can read", "it needs model.safetensors or pytorch_model.bin"
        )
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=wanted, etag_timeout=5))
    except (HfHubHTTPError, OSError, requests.RequestException) as error:
        raise BtError(f"downloading {repo_id} failed: {error}", hint) from None
    return path


def weight_files(path: Path) -> list[Path]:
    for pattern in ("model*.safetensors", "pytorch_model*.bin"):
        found = sorted(path.glob(pattern))
        if found:
            return found
    return []


def stored_weight_names(path: Path) -> set[str] | None:
    """The tensor names a checkpoint directory stores, read without torch: from its index file or its safetensors
    headers (None for pickled weights, which only torch reads)."""
    import json
    import struct

    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            return set(json.loads((path / index).read_text())["weight_map"])
    files = weight_files(path)
    if not files or files[0].suffix != ".safetensors":
        return None
    names: set[str] = set()
    for file in files:
        with open(file, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(min(size, 100 * 2**20)))
        names.update(name for name in header if name != "__metadata__")
    return names


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The local Hugging Face cache snapshot of a hub checkpoint at ``revision`` (a branch, tag, commit or
    ``refs/pr/N``), if it holds a config and weights; no network."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if not isinstance(config, str):
        return None
    path = Path(config).parent
    return path if weight_files(path) else None


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


def embedding_identity(path: Path, name: str, precision: str) -> tuple[str, str]:
    """What an index records of the model whose vectors it holds: the checkpoint's fingerprint, with the precision
    unless float32 (int8 or bfloat16 vectors are not float32 ones: an index never mixes them), and a label."""
    if precision == "float32":
        return fingerprint(path), name
    return f"{fingerprint(path)}+{precision}", f"{name} ({precision})"
