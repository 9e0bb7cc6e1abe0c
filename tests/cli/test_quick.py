"""A plain command line is parsed without Typer (``cli/quick.py``, issue 34) to exactly the values Typer gives the
command: for every command, lines with each option in each spelling, all options at once, repeated options, ``--``,
and environment variables. Where quick is not sure (help, ``-k5``, a bad value, a missing argument) it gives the
line to Typer, whose errors stay word for word."""

from __future__ import annotations

import importlib
import inspect
import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import pytest
from helpers import bt_without

from bridgetower_cli.cli import quick
from bridgetower_cli.cli.app import UsageError, typer_command
from bridgetower_cli.cli.boundary import boundary
from bridgetower_cli.cli.listing import COMMANDS
from bridgetower_cli.cli.params import Argument, Option, declared

TYPER_ONLY = {"serve"}  # (takes Typer's context: always Typer's to parse)


def function_of(name: str):
    module, function, _ = COMMANDS[name].where.split(":")
    return getattr(importlib.import_module(f"bridgetower_cli.cli.{module}"), function)


def typer_values(function, arguments: list[str], environ: dict[str, str], monkeypatch) -> dict:
    """What Typer, as bt builds a command, calls ``function`` with."""
    captured = {}

    def record(**values):
        captured.update(values)

    record.__signature__ = inspect.signature(function, eval_str=True)
    for variable in [v for v in os.environ if v.startswith("BT_")]:
        monkeypatch.delenv(variable)
    for variable, value in environ.items():
        monkeypatch.setenv(variable, value)
    typer_command("command", record).main(arguments, prog_name="bt command", standalone_mode=False)
    return captured


def sample(kind, other: bool = False) -> str:
    """A valid value of ``kind`` as typed on a command line (``other``: another one)."""
    kind = quick._item(kind) if quick._many(kind) else quick._plain(kind)
    if isinstance(kind, type) and issubclass(kind, Enum):
        return list(kind)[0 if other else -1].value.upper()
    return {str: ("two cats", "one dog"), int: ("3", "-7"), float: ("2.5", "1e1"), Path: ("a/file.txt", "b.txt")}[kind][
        other
    ]


def lines(name: str) -> list[tuple[list[str], dict[str, str]]]:
    """Command lines (and environments) for ``bt NAME`` that Typer accepts."""
    options, positional, found = [], [], []
    for parameter in inspect.signature(function_of(name), eval_str=True).parameters.values():
        kind, param = declared(parameter.annotation)
        (positional if param.kind == "argument" else options).append((kind, param))
        if param.kind == "argument" and parameter.default is not inspect.Parameter.empty:
            found.append(([], {}))  # (none of an optional argument)
    start = [word for kind, _ in positional for word in (["cat.jpg", "a cat", "-"] if quick._many(kind) else ["x"])]
    found, everything = [*found, (start, {})], list(start)
    for kind, param in options:
        values = [] if quick._flag(kind) else [sample(kind), sample(kind, other=True)]
        if param.settings.get("callback"):
            values = ["cpu", "auto"]
        for decl in param.decls:  # each spelling, before the arguments and after them
            found += [([decl, *values[:1], *start], {}), ([*start, decl, *values[:1]], {})]
        long = param.decls[0]
        everything.append(f"{long}={values[0]}" if values else long)
        if values:  # twice: a repeatable option keeps both values, another the last
            found.append(([long, values[1], *start, long, values[0]], {}))
        if param.settings.get("envvar") and not quick._many(kind):
            found.append((start, {param.settings["envvar"]: values[0] if values else "1"}))
    found.append((everything, {}))
    if positional and quick._many(positional[0][0]):
        found.append((["--", *start, "-x", "--top-k"], {}))
    return found


@pytest.mark.parametrize("name", sorted(set(COMMANDS) - TYPER_ONLY))
def test_quick_parses_every_line_as_typer_does(name, monkeypatch):
    function = function_of(name)
    for arguments, environ in lines(name):
        quickly = quick.parse(function, arguments, environ)
        assert quickly is not None, (arguments, environ)
        assert quickly == typer_values(function, arguments, environ, monkeypatch), (arguments, environ)


SPELLINGS_LEFT_TO_TYPER = [["cat.jpg", "a cat", "-k1"], ["cat.jpg", "a cat", "-qk", "1"], ["-h", "cat.jpg", "a cat"]]
REFUSED = [
    ["cat.jpg", "a cat", "-k=1"],
    ["cat.jpg", "a cat", "--top-k", "x"],
    ["cat.jpg", "a cat", "--top-k"],
    ["cat.jpg", "a cat", "--timeout", "0"],
    ["cat.jpg", "a cat", "--format", "yaml"],
    ["cat.jpg", "a cat", "--quiet=yes"],
    ["cat.jpg", "a cat", "--nope"],
    ["cat.jpg", "a cat", "-5"],
    [],
]


@pytest.mark.parametrize("arguments", SPELLINGS_LEFT_TO_TYPER + REFUSED, ids=" ".join)
def test_where_quick_is_not_sure_typer_parses_it(arguments, monkeypatch):
    assert quick.parse(function_of("score"), arguments, {}) is None
    if arguments in REFUSED:
        with pytest.raises(UsageError):
            typer_values(function_of("score"), arguments, {}, monkeypatch)


def test_an_unsure_environment_is_typer_s_and_a_failing_callback_too():
    score = function_of("score")
    assert quick.parse(score, ["cat.jpg", "a cat"], {"BT_FAST_DECODE": "yes"}) is None
    assert quick.parse(score, ["cat.jpg", "a cat"], {"BT_MODEL": ""}) is None
    assert quick.parse(score, ["cat.jpg", "a cat", "-d", "tpu"], {}) is None
    assert quick.parse(score, ["cat.jpg", "a cat"], {"BT_DEVICE": "tpu"}) is None
    assert quick.parse(function_of("serve"), [], {}) is None


class Size(str, Enum):
    small = "small"
    Large = "Large"


def sized(size: Annotated[Size, Option("--size")] = Size.small, names: Annotated[list[str] | None, Argument()] = None):
    """(A command with a case-sensitive choice: bt has none yet.)"""


@pytest.mark.parametrize("word", ["small", "Large"])
def test_a_case_sensitive_choice_is_taken_exactly_as_typer_takes_it(word, monkeypatch):
    assert quick.parse(sized, ["--size", word], {}) == {"size": Size(word), "names": None}
    assert quick.parse(sized, ["--size", word.swapcase()], {}) is None
    assert typer_values(sized, ["--size", word], {}, monkeypatch) == {"size": Size(word), "names": None}
    with pytest.raises(UsageError):
        typer_values(sized, ["--size", word.swapcase()], {}, monkeypatch)


def test_a_path_that_exists_but_cannot_be_read_is_typer_s_to_refuse(tmp_path, monkeypatch):
    """click's Path is readable by default: an existing path the user may not read is a usage error, never run."""
    locked = tmp_path / "index.sqlite"
    locked.write_text("")
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # (as another user: root may read anything)
    arguments = ["--stats", "--index", str(locked)]
    assert quick.parse(function_of("index"), arguments, {}) is None
    assert quick.parse(function_of("index"), ["--stats"], {"BT_INDEX": str(locked)}) is None
    with pytest.raises(UsageError, match="not readable"):
        typer_values(function_of("index"), arguments, {}, monkeypatch)
    assert quick.parse(function_of("index"), ["--stats", "--index", str(tmp_path / "new.sqlite")], {}) is not None


def test_an_integer_past_python_s_digits_is_a_usage_error_both_ways(monkeypatch):
    arguments = ["cat.jpg", "a cat", "-k", "1" * 4301]
    assert quick.parse(function_of("score"), arguments, {}) is None
    with pytest.raises(UsageError):
        typer_values(function_of("score"), arguments, {}, monkeypatch)


def test_a_command_that_cannot_be_imported_is_one_line():
    done = bt_without("bridgetower_cli.cli.classify", "classify", "x.jpg", "-l", "a,b")
    assert done.returncode == 1 and done.stderr.startswith("bt: error: unexpected"), done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_an_end_of_input_ends_as_an_abort_does():
    with pytest.raises(SystemExit) as ended, boundary():
        raise EOFError
    assert ended.value.code == 130
