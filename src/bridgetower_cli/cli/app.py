"""The ``bt`` command line: the Typer app, its commands (one module per family), and the one error boundary."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

import typer
from typer import Abort
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from .. import __version__
from ..errors import BtError
from ..errors import UsageError as BtUsageError
from .boundary import boundary, report
from .listing import COMMANDS, HELP
from .params import typer_ready

# Typer raises the usage errors of the click it runs on (its own copy in recent versions): their classes, reached
# from the public typer.BadParameter, not from a private module.
UsageError = typer.BadParameter.__mro__[1]
ClickException = UsageError.__mro__[1]
assert (UsageError.__name__, ClickException.__name__) == ("UsageError", "ClickException")
SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")


def _light(parameter):
    """A parameter's runtime coercion: its value parsed without pydantic where it has a plain form (``coercion``).
    (Typers that coerce with click's types never ask for one; one whose internals moved gets its own coercion.)"""
    if parameter._runtime_param is None:
        from functools import partial

        try:
            from typer._coercion import build_runtime_param

            from .coercion import LightParam
        except ImportError:
            return super(type(parameter), parameter).get_runtime_param()
        described = parameter.type_descriptor
        fallback = partial(build_runtime_param, described)
        parameter._runtime_param = LightParam(described.parameter_info, described.annotation, fallback)
    return parameter._runtime_param


class _Option(TyperOption):
    """An option whose help shows its metavar (N, FILE, ...), nothing for a flag: never a type placeholder; its
    value parsed without pydantic where plain."""

    get_runtime_param = _light

    def display_type_rich(self, ctx):
        return None if self.is_flag else super().display_type_rich(ctx)


class _Argument(TyperArgument):
    get_runtime_param = _light

    def display_type_rich(self, ctx):
        return None


def _plain_metavars(params) -> None:
    for param in params:
        param.__class__ = {TyperOption: _Option, TyperArgument: _Argument}.get(type(param), type(param))


class Command(TyperCommand):
    """bt's commands: Typer's, with help free of type placeholders (<bool>, <str>, <list[str]>)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        _plain_metavars(params)
        return params


class Group(TyperGroup):
    """bt's group: every command listed (help, completion, suggestions) from ``COMMANDS``, only the one invoked built:
    its module imported and its parameters made when it runs or shows its own help."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands.update({name: Command(name, help=entry.summary) for name, entry in COMMANDS.items()})
        self.built: set[str] = set()
        self.listing = False

    def get_params(self, ctx):
        params = super().get_params(ctx)
        _plain_metavars(params)
        return params

    def get_command(self, ctx, name: str):
        if name in COMMANDS and name not in self.built and not self.listing:
            self.commands[name] = built(name)
            self.built.add(name)
        return self.commands.get(name)

    def format_help(self, ctx, formatter) -> None:
        with self._listed():
            super().format_help(ctx, formatter)

    def shell_complete(self, ctx, incomplete: str):
        with self._listed():
            return super().shell_complete(ctx, incomplete)

    @contextlib.contextmanager
    def _listed(self):
        """Commands named, not built: the summaries are all a listing shows."""
        self.listing = True
        try:
            yield
        finally:
            self.listing = False


def built(name: str) -> TyperCommand:
    """The command ``bt NAME`` runs, made now from its function."""
    module, function, epilog = COMMANDS[name].where.split(":")
    found = importlib.import_module(f"{__package__}.{module}")
    return typer_command(name, getattr(found, function), getattr(found, epilog))


def typer_command(name: str, function, epilog: str | None = None) -> TyperCommand:
    """``function`` as the Typer command ``bt NAME`` (its parameters declared as bt declares them)."""
    single = typer.Typer(rich_markup_mode="rich", pretty_exceptions_enable=False, add_completion=False)
    single.command(name, epilog=epilog, cls=Command)(typer_ready(function))
    return typer.main.get_command(single)


app = typer.Typer(
    name="bt",
    cls=Group,
    help=HELP,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"bt {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """BridgeTower vision-language model at the shell prompt."""


def _usage_error(error: UsageError) -> BtError:
    """Click's usage message as one of bt's lines: lower case, one line, the help to see as the hint."""
    message = " ".join(error.format_message().replace("Value error, ", "").split())
    command = error.ctx.command_path if error.ctx is not None else "bt"
    return BtError(message[:1].lower() + message[1:], f"see {command} --help")


def _completion(argv: list[str]) -> None:
    """``--install-completion [SHELL]`` / ``--show-completion [SHELL]``: Typer's, for the shells it knows (another is
    a usage error, never a bash script in its place), and for zsh only bt's own completion: none of the global
    ``zstyle`` Typer adds to ~/.zshrc."""
    from pathlib import Path

    if len(argv) == 2:
        if argv[1] not in SHELLS:
            raise BtUsageError(f"bt cannot complete {argv[1]}", f"shells: {', '.join(SHELLS)}")
        # Typer takes a shell name there only with its shell detection off; without a name it detects the shell.
        os.environ["_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"] = "1"
    zshrc = Path.home() / ".zshrc"
    before = zshrc.read_text() if zshrc.is_file() else None
    try:
        app(args=argv, prog_name="bt", standalone_mode=False)
    finally:
        after = zshrc.read_text() if zshrc.is_file() else None
        style = "zstyle ':completion:*' menu select"
        if after != before and style in (after or "") and style not in (before or ""):
            zshrc.write_text((after or "").replace(f"\n{style}\n", "\n"))


def main(argv: list[str] | None = None) -> None:
    """The entry point through Typer, inside the one error boundary (``boundary``): click's usage errors become
    bt's one line (exit 2), its other errors bt's errors, its Abort a Ctrl-C."""
    argv = sys.argv[1:] if argv is None else argv
    with boundary():
        try:
            if argv[:1] in (["--install-completion"], ["--show-completion"]):
                return _completion(argv)
            code = app(args=argv, prog_name="bt", standalone_mode=False)
        except UsageError as error:
            if error.format_message():  # (empty after `bt` alone, which shows the help)
                report(_usage_error(error))
            sys.exit(2)
        except ClickException as error:
            report(BtError(error.format_message()))
            sys.exit(error.exit_code)
        except Abort:  # (Typer itself ends a Ctrl-C in a command with status 130)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)
