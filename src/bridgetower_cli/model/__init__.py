"""The model: the public checkpoints, finding them (hub, cache), loading one backbone with its heads, and the runtime
that encodes each image and text once and fuses pairs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .loading import LoadedModel
    from .runtime import Runtime


def runtime_for(loaded: LoadedModel) -> Runtime:
    """The runtime that runs ``loaded`` in its precision: int8 through ONNX Runtime, the rest in torch."""
    if loaded.precision == "int8":
        from .int8 import QuantizedRuntime

        return QuantizedRuntime(loaded)
    from .runtime import Runtime

    return Runtime(loaded)
