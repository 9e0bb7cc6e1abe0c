"""What bt knows and runs on: ``bt models`` and ``bt doctor``."""

from __future__ import annotations

from ..model.catalog import KNOWN_CHECKPOINTS
from .options import Device, Dtype, DtypeOpt, Format, FormatOpt

MODELS_EPILOG = "Examples:\n\n  bt models\n\n  bt models -f json | jq -r '.[] | select(.cached) | .id'"
DOCTOR_EPILOG = "Examples:\n\n  bt doctor\n\n  bt doctor -f json | jq .device"


def models(fmt: FormatOpt = Format.auto) -> None:
    """The public BridgeTower checkpoints: their heads, image size, and whether they are in the local cache."""
    from ..model.hub import cached_snapshot
    from ..operations.table import DEFAULT_MODELS
    from ..records import ModelRecord
    from .render import render

    records = [
        ModelRecord(
            c.id,
            list(c.heads),
            c.image_size,
            cached_snapshot(c.id) is not None,
            [command for command, model in DEFAULT_MODELS.items() if model == c.id],
        )
        for c in KNOWN_CHECKPOINTS
    ]
    render(records, fmt.value)


def doctor(device: Device = "auto", dtype: DtypeOpt = Dtype.auto, fmt: FormatOpt = Format.auto) -> None:
    """What bt runs on: versions, device and dtype, threads, the cache and index paths, the cached checkpoints."""
    from .doctor import environment
    from .render import render_object

    render_object(environment(device, dtype.value), fmt.value)
