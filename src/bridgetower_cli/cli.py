"""The ``bt`` command line: one thin function per command (parse, call a task, render). No torch import here."""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

import typer

from . import __version__
from .catalog import DEFAULT_MATCHING_MODEL
from .errors import BtError
from .hub import resolve_checkpoint
from .inputs import IMAGE_SUFFIXES, expand_image_sources, read_texts
from .options import BatchSize, Device, DtypeOpt, FormatOpt, Inputs, Model, Quiet, TextsFile, TopK
from .output import StderrReporter, render, stderr_console

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


def _is_image_source(item: str) -> bool:
    if item == "-" or "://" in item:
        return True
    path = Path(item).expanduser()
    return path.exists() or path.suffix.lower() in IMAGE_SUFFIXES or (glob.has_magic(item) and bool(glob.glob(item)))


def split_inputs(items: list[str]) -> tuple[list[str], list[str]]:
    """Leading items that name image sources are images; the rest are texts (the first item is always an image)."""
    count = 1
    while count < len(items) and _is_image_source(items[count]):
        count += 1
    return items[:count], items[count:]


def _runtime(model: str, device: str, dtype, needs: tuple[str, ...]):
    """Resolve the checkpoint first (fast, no torch), then import torch and load it."""
    path = resolve_checkpoint(model)
    from .loading import load_model
    from .runtime import Runtime

    return Runtime(load_model(path, model, device, dtype.value, needs))


def _finish(outcome, fmt, reporter: StderrReporter) -> None:
    render(outcome.records, fmt.value)
    reporter.summary(outcome.skipped)
    if outcome.skipped:
        raise typer.Exit(3)


@app.command(
    epilog="Examples:\n\n"
    "  bt score samples/cat.jpg 'a cat lying on a couch' 'a rocket launch'\n\n"
    "  bt score samples/ 'a cup of coffee' -k 1 -f json | jq '.[] | {image, probability}'\n\n"
    "  bt score 'photos/*.jpg' --texts-file captions.txt -f csv > scores.csv",
)
def score(
    inputs: Inputs,
    texts_file: TextsFile = None,
    model: Model = DEFAULT_MATCHING_MODEL,
    device: Device = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: BatchSize = 8,
    top_k: TopK = None,
    fmt: FormatOpt = "auto",
    quiet: Quiet = False,
) -> None:
    """Image-text matching scores (ITM head) for every image x text pair, best first per image."""
    image_specs, text_args = split_inputs(inputs)
    texts = read_texts(text_args, texts_file)
    sources = expand_image_sources(image_specs)
    reporter = StderrReporter(quiet)
    runtime = _runtime(model, device, dtype, needs=("itm",))
    from . import tasks

    _finish(tasks.score(runtime, sources, texts, batch_size, top_k, reporter), fmt, reporter)


def _report(error: BtError) -> None:
    message = f"bt: error: {error.message}"
    if error.hint:
        message += f" (hint: {error.hint})"
    stderr_console().print(message, markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """The entry point and the one error boundary: usage errors exit 2 (Typer), bt's errors 1, partial work 3;
    never a traceback unless BT_DEBUG=1."""
    try:
        app(args=argv, prog_name="bt")
    except BtError as error:
        if os.environ.get("BT_DEBUG") == "1":
            raise
        _report(error)
        sys.exit(error.exit_code)
    except Exception as error:  # anything unexpected is still one line
        if os.environ.get("BT_DEBUG") == "1":
            raise
        _report(BtError(f"unexpected {type(error).__name__}: {error}", "run again with BT_DEBUG=1 for the traceback"))
        sys.exit(1)
