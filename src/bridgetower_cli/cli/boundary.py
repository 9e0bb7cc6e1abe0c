"""The one error boundary every way a command runs passes through (Typer's parse or ``quick``'s): bt's errors exit
1, usage errors 2 (one line), partial work 3, Ctrl-C 130; never a traceback unless BT_DEBUG=1."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from ..errors import BtError, Interrupted, PartialSuccess, StdoutClosed


@contextlib.contextmanager
def boundary():
    """Run the block; whatever it raises becomes one line on stderr and bt's exit status."""
    debug = os.environ.get("BT_DEBUG") == "1"
    try:
        yield
    except (StdoutClosed, BrokenPipeError):
        _end_of_pipe()
    except (PartialSuccess, Interrupted) as ending:
        report(ending, label="")
        sys.exit(ending.exit_code)
    except BtError as error:
        if debug:
            raise
        report(error)
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, EOFError):  # (as click ends them: an abort)
        sys.exit(130)
    except Exception as error:  # anything unexpected is still one line
        if debug:
            raise
        report(BtError(f"unexpected {type(error).__name__}: {error}", "run again with BT_DEBUG=1 for the traceback"))
        sys.exit(1)


def report(error: BtError, label: str = "error: ") -> None:
    message = error.message if len(error.message) <= 300 else error.message[:300] + "…"
    message = f"bt: {label}{message}"
    if error.hint:
        message += f" (hint: {error.hint})"
    from .console import stderr_console

    stderr_console().print(message, markup=False, highlight=False, soft_wrap=True)


def _end_of_pipe() -> None:
    """stdout's reader has gone (``bt ... | head -1``): end as standard filters do, killed by SIGPIPE (status 141
    in a shell), without a word."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
