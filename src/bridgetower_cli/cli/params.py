"""bt's parameter declarations, free of Typer. ``Option(...)`` and ``Argument(...)`` record what ``typer.Option`` and
``typer.Argument`` would be called with; ``typer_ready`` hands a command to Typer with them made Typer's (for help,
completion and every usage error), and ``quick`` parses a plain command line from the same records without
importing Typer (~50 ms of a call to the automatic server)."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, get_args, get_origin

WHOLE = re.compile(r"[+-]?[0-9]+")  # the plain forms of numbers (an odd one, such as 1_0, is Typer's to parse)
DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


class Unsure(Exception):
    """A value (or a whole line) left to Typer to parse: its words are then the ones bt shows."""


def plain_number(kind: type, value: Any, low: float | None = None, high: float | None = None) -> int | float:
    """``value`` as an int or a float where it is one, or a string in its plain form, within ``low``..``high``;
    else ``Unsure`` (a typo, ``1_0``, an int past Python's 4,300 digits, a value out of range)."""
    if type(value) is not kind:
        if not (isinstance(value, str) and (WHOLE if kind is int else DECIMAL).fullmatch(value)):
            raise Unsure
        try:
            value = kind(value)
        except ValueError:
            raise Unsure from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise Unsure
    return value


@dataclass(frozen=True)
class Param:
    """One option or argument as declared: its kind, its names (options) and Typer's keyword settings."""

    kind: str  # "option" | "argument"
    decls: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)

    def typer(self):
        import typer

        made = typer.Option if self.kind == "option" else typer.Argument
        return made(*self.decls, **self.settings)


def Option(*decls: str, **settings: Any) -> Param:  # noqa: N802 (read as typer.Option is)
    return Param("option", decls, settings)


def Argument(**settings: Any) -> Param:  # noqa: N802
    return Param("argument", (), settings)


def declared(annotation: Any) -> tuple[Any, Param | None]:
    """A parameter's value type and bt's declaration of it (None: not declared here)."""
    if get_origin(annotation) is Annotated:
        kind, *extras = get_args(annotation)
        found = [extra for extra in extras if isinstance(extra, Param)]
        return kind, (found[0] if found else None)
    return annotation, None


def typer_ready(function: Callable) -> Callable:
    """``function`` as Typer reads it: every declaration of bt's made Typer's, the rest as it was."""
    signature = inspect.signature(function, eval_str=True)
    parameters = []
    for parameter in signature.parameters.values():
        kind, param = declared(parameter.annotation)
        parameters.append(parameter.replace(annotation=Annotated[kind, param.typer()]) if param else parameter)

    @functools.wraps(function)
    def call(**values):
        return function(**values)

    call.__signature__ = signature.replace(parameters=parameters)
    call.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return call
