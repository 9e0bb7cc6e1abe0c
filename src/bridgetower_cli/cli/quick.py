"""A plain command line parsed without Typer: ``bt score cat.jpg "a cat" -k 1 -f json`` needs none of Typer's
machinery, whose import is a third of a call to the automatic server. ``parse`` reads the command's own declarations
(``params``) as click would, and gives up (None) wherever it is not sure: an option it does not know (``--help``
among them), ``-k5`` or ``-qn``, a value that does not parse or is out of range, a missing argument. Typer then
parses the line, so every usage error is still Typer's, word for word; a test holds the two parses equal."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import types
from enum import Enum
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from .listing import COMMANDS
from .params import Param, Unsure, declared, plain_number

UNDERSTOOD = {"help", "metavar", "show_default", "envvar", "case_sensitive", "min", "max", "callback", "autocompletion"}
TRUE, FALSE = {"1", "true"}, {"0", "false"}


def run(arguments: list[str], environ: dict[str, str]) -> bool:
    """Run ``bt COMMAND ...`` if ``parse`` is sure of it (the process then ends); False to leave it to Typer."""
    if not arguments or arguments[0] not in COMMANDS or any(name.startswith("_BT_COMPLETE") for name in environ):
        return False
    from .boundary import boundary

    with boundary():  # (the command's import and a callback's error too: one line, as under Typer)
        module, name, _ = COMMANDS[arguments[0]].where.split(":")
        function = getattr(importlib.import_module(f"{__package__}.{module}"), name)
        values = parse(function, arguments[1:], environ)
        if values is None:
            return False
        code = function(**values)
    sys.exit(code if isinstance(code, int) else 0)


def parse(function, arguments: list[str], environ: dict[str, str]) -> dict[str, Any] | None:
    """The values Typer would call ``function`` with for ``arguments``, or None where this is not sure of them."""
    try:
        return _parsed(inspect.signature(function, eval_str=True).parameters.values(), arguments, environ)
    except Unsure:
        return None


def _parsed(parameters: list, arguments: list[str], environ: dict[str, str]) -> dict[str, Any]:
    names, positional, declarations = {}, [], {}
    for parameter in parameters:
        kind, param = declared(parameter.annotation)
        if param is None or set(param.settings) - UNDERSTOOD:
            raise Unsure
        declarations[parameter.name] = (kind, param, parameter.default)
        if param.kind == "argument":
            positional.append(parameter.name)
        names.update({decl: parameter.name for decl in param.decls})
    given: dict[str, list[str]] = {}
    loose: list[str] = []
    words = iter(arguments)
    for word in words:
        if word == "--":
            loose.extend(words)
        elif word.startswith("-") and word != "-":
            option, equals, attached = word.partition("=")
            if option not in names or (equals and not option.startswith("--")):
                raise Unsure  # (unknown, --help, -k5, -qn, -k=5: Typer's to parse or refuse)
            name = names[option]
            if _flag(declarations[name][0]):
                if equals:
                    raise Unsure
                given.setdefault(name, []).append("1")
            else:
                value = attached if equals else next(words, None)
                if value is None:
                    raise Unsure
                given.setdefault(name, []).append(value)
        else:
            loose.append(word)
    values = {name: _value(name, declarations[name], given.get(name), environ) for name in declarations}
    return values | _arguments(positional, declarations, loose)


def _arguments(positional: list[str], declarations: dict, loose: list[str]) -> dict[str, Any]:
    """The positional words, to one list argument or to as many single ones."""
    if len(positional) == 1 and _many(declarations[positional[0]][0]):
        name = positional[0]
        kind, param, default = declarations[name]
        if not loose and default is inspect.Parameter.empty:
            raise Unsure  # (missing: Typer says so)
        return {name: [_coerced(_item(kind), param, word) for word in loose] if loose else default}
    if any(_many(declarations[name][0]) for name in positional) or len(loose) > len(positional):
        raise Unsure
    found = {}
    for k, name in enumerate(positional):
        kind, param, default = declarations[name]
        if k >= len(loose) and default is inspect.Parameter.empty:
            raise Unsure
        found[name] = _coerced(kind, param, loose[k]) if k < len(loose) else default
    return found


def _value(name: str, declaration, given: list[str] | None, environ: dict[str, str]) -> Any:
    """An option's value: from the line (the last one given, or all of a repeatable one), else its environment
    variable, else its default; then its callback, as click applies it."""
    kind, param, default = declaration
    if param.kind == "argument":
        return None  # (``_arguments``)
    envvar = param.settings.get("envvar")
    if given is None and envvar and envvar in environ:
        if _many(kind) or not environ[envvar]:
            raise Unsure
        given = [environ[envvar]]
    if given is None:
        value = default
    elif _flag(kind):
        if given[-1] not in TRUE | FALSE:
            raise Unsure
        value = given[-1] in TRUE
    elif _many(kind):
        value = [_coerced(_item(kind), param, word) for word in given]
    else:
        value = _coerced(kind, param, given[-1])
    callback = param.settings.get("callback")
    if callback is not None:
        try:
            value = callback(value)
        except Exception:
            raise Unsure from None
    return value


def _coerced(kind: Any, param: Param, word: str) -> Any:
    """``word`` as ``kind`` where it has its plain form (as ``coercion.plain`` parses under Typer); else Unsure."""
    kind = _plain(kind)
    if kind is str:
        return word
    if kind in (int, float):
        return plain_number(kind, word, param.settings.get("min"), param.settings.get("max"))
    if kind is Path:  # (as click's Path type, readable by default: a path that exists must be readable)
        try:
            os.stat(word)
        except (OSError, ValueError):
            return Path(word)
        if not os.access(word, os.R_OK):
            raise Unsure
        return Path(word)
    if isinstance(kind, type) and issubclass(kind, Enum):
        fold = (lambda text: text) if param.settings.get("case_sensitive", True) else str.casefold
        for member in kind:
            if fold(member.value) == fold(word):
                return member
    raise Unsure


def _plain(kind: Any) -> Any:
    """``X | None`` as ``X``."""
    if get_origin(kind) in (Union, types.UnionType):
        others = [arg for arg in get_args(kind) if arg is not type(None)]
        if len(others) == 1:
            return others[0]
    return kind


def _many(kind: Any) -> bool:
    return get_origin(_plain(kind)) is list


def _item(kind: Any) -> Any:
    return get_args(_plain(kind))[0]


def _flag(kind: Any) -> bool:
    return _plain(kind) is bool
