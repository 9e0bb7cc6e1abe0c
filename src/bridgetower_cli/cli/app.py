"""The ``bt`` command line: the Typer app, its commands (one module per family), and the one error boundary."""

from __future__ import annotations

import os
import signal
import sys

import typer
from typer import Abort
from typer.core import TyperArgument, TyperOption

try:  # the click that Typer runs on: its own vendored copy in recent versions
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older Typer
    from click.exceptions import ClickException, UsageError

from .. import __version__
from ..errors import BtError, PartialSuccess, StdoutClosed
from . import embed, evaluate, info, pairs, retrieval, serve

SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")
# Help shows each option's metavar (N, FILE, ...) and nothing for flags and arguments, never Typer's type
# placeholders (<bool>, <str>, <list[str]>).
_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else _option_type(self, ctx)
TyperArgument.display_type_rich = lambda self, ctx: None

app = typer.Typer(
    name="bt",
    help="BridgeTower vision-language model at the shell prompt: score, fill-mask, embed, retrieve.",
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


app.command(epilog=pairs.SCORE_EPILOG)(pairs.score)
app.command("fill-mask", epilog=pairs.FILL_MASK_EPILOG)(pairs.fill_mask)
app.command(epilog=embed.EPILOG)(embed.embed)
app.command(epilog=retrieval.RETRIEVE_EPILOG)(retrieval.retrieve)
app.command("index", epilog=retrieval.INDEX_EPILOG)(retrieval.index)
app.command(epilog=pairs.EXPLAIN_EPILOG)(pairs.explain)
app.command(epilog=serve.EPILOG)(serve.serve)
app.command("eval", epilog=evaluate.EPILOG)(evaluate.evaluate)
app.command(epilog=info.MODELS_EPILOG)(info.models)
app.command(epilog=info.DOCTOR_EPILOG)(info.doctor)


def _report(error: BtError, label: str = "error: ") -> None:
    message = error.message if len(error.message) <= 300 else error.message[:300] + "…"
    message = f"bt: {label}{message}"
    if error.hint:
        message += f" (hint: {error.hint})"
    from .render import stderr_console

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


def main(argv: list[str] | None = None) -> None:
    """The entry point and the one error boundary: bt's errors exit 1, usage errors 2 (the same one line), partial
    work 3, Ctrl-C 130; never a traceback unless BT_DEBUG=1."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] in ("--install-completion", "--show-completion") and argv[1] in SHELLS:
        # Typer takes a shell name there only with its shell detection off; without a name it detects the shell.
        os.environ["_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"] = "1"
    debug = os.environ.get("BT_DEBUG") == "1"
    try:
        code = app(args=argv, prog_name="bt", standalone_mode=False)
    except (StdoutClosed, BrokenPipeError):
        _end_of_pipe()
    except PartialSuccess as partial:
        _report(partial, label="")
        sys.exit(partial.exit_code)
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
