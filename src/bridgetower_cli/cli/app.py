"""The ``bt`` command line: the Typer app, its commands (one module per family), and the one error boundary."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys

import typer
from typer import Abort
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from .. import __version__
from ..errors import BtError, Interrupted, PartialSuccess, StdoutClosed
from ..errors import UsageError as BtUsageError
from .listing import COMMANDS, HELP

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
    single = typer.Typer(rich_markup_mode="rich", pretty_exceptions_enable=False, add_completion=False)
    single.command(name, epilog=getattr(found, epilog), cls=Command)(getattr(found, function))
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


def _report(error: BtError, label: str = "error: ") -> None:
    message = error.message if len(error.message) <= 300 else error.message[:300] + "…"
    message = f"bt: {label}{message}"
    if error.hint:
        message += f" (hint: {error.hint})"
    from .console import stderr_console

    stderr_console().print(message, markup=False, highlight=False, soft_wrap=True)


def _usage_error(error: UsageError) -> BtError:
    """Click's usage message as one of bt's lines: lower case, one line, the help to see as the hint."""
    message = " ".join(error.format_message().replace("Value error, ", "").split())
    command = error.ctx.command_path if error.ctx is not None else "bt"
    return BtError(message[:1].lower() + message[1:], f"see {command} --help")


def _end_of_pipe() -> None:
    """stdout's reader has gone (``bt ... | head -1``): end as standard filters do, killed by SIGPIPE (status 141
    in a shell), without a word."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)


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
    """The entry point and the one error boundary: bt's errors exit 1, usage errors 2 (the same one line), partial
    work 3, Ctrl-C 130; never a traceback unless BT_DEBUG=1."""
    argv = sys.argv[1:] if argv is None else argv
    debug = os.environ.get("BT_DEBUG") == "1"
    try:
        if argv[:1] in (["--install-completion"], ["--show-completion"]):
            return _completion(argv)
        code = app(args=argv, prog_name="bt", standalone_mode=False)
    except (StdoutClosed, BrokenPipeError):
        _end_of_pipe()
    except (PartialSuccess, Interrupted) as ending:
        _report(ending, label="")
        sys.exit(ending.exit_code)
    except BtError as error:
        if debug:
            raise
        _report(error)
        sys.exit(error.exit_code)
    except UsageError as error:
        if error.format_message():  # (empty after `bt` alone, which shows the help)
            _report(_usage_error(error))
        sys.exit(2)
    except ClickException as error:
        _report(BtError(error.format_message()))
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, Abort):  # (Typer itself ends a Ctrl-C in a command with status 130)
        sys.exit(130)
    except Exception as error:  # anything unexpected is still one line
        if debug:
            raise
        _report(BtError(f"unexpected {type(error).__name__}: {error}", "run again with BT_DEBUG=1 for the traceback"))
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
