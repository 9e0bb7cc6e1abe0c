"""Command-line values parsed without pydantic. Typer (0.2x) coerces every value through a pydantic TypeAdapter,
whose import alone (~90 ms) outweighs a call to the automatic server. bt's parameters are str, int, float, bool,
Path, an Enum or a list of them: a value in their plain form is parsed here with the standard library, to what
Typer's adapter would give; anything else (a value out of range, a typo, an odd spelling such as ``1_0``) goes to
Typer's own coercion, so that every error message stays word for word Typer's."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

from typer._coercion import RuntimeParam
from typer._param_types import coerce_cli_choice, coerce_cli_path

from .params import Unsure, plain_number


@dataclass(frozen=True)
class LightParam(RuntimeParam):
    """A parameter's coercion: the plain forms here, the rest through ``fallback`` (Typer's, built when needed)."""

    fallback: Any = None

    def _coerce_value(self, value: Any, param, ctx) -> Any:
        try:
            return plain(self.annotation, self.parameter_info, value, param, ctx)
        except Unsure:
            return self.fallback()._coerce_value(value, param=param, ctx=ctx)


def plain(annotation: Any, info, value: Any, param=None, ctx=None) -> Any:
    """``value`` as ``annotation``, where it has its plain form; else ``Unsure``."""
    if info.parser is not None or info.clamp:
        raise Unsure
    if get_origin(annotation) is list and isinstance(value, (list, tuple)):
        (item,) = get_args(annotation)
        return [plain(item, info, element, param, ctx) for element in value]
    if annotation in (str, bool) and type(value) is annotation:
        return value
    if annotation in (int, float):
        return plain_number(annotation, value, info.min, info.max)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        try:
            return coerce_cli_choice(value, choices=tuple(annotation), case_sensitive=info.case_sensitive, ctx=ctx)
        except ValueError:
            raise Unsure from None
    if annotation is Path and info.path_type is None and isinstance(value, (str, Path)):
        return coerce_cli_path(Path(value), info, path_type=Path, param=param, ctx=ctx)
    raise Unsure
