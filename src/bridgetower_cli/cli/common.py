"""What every command shares: the model options declared and parsed once (``model_command``), the one way records
reach stdout and the run's ending (``emit``), and reading images and texts from arguments."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BtError, Interrupted, UsageError
from .options import (
    ApiKey,
    ApiKeyFile,
    BatchSize,
    ClientTimeout,
    Device,
    Dtype,
    DtypeOpt,
    FastDecode,
    Format,
    Model,
    Revision,
    Server,
    Threads,
)

if TYPE_CHECKING:
    from ..records import Outcome
    from ..sources import ImageSource

_MODEL_OPTIONS = [
    ("model", Model, None),
    ("revision", Revision, None),
    ("device", Device, "auto"),
    ("dtype", DtypeOpt, Dtype.auto),
    ("threads", Threads, None),
    ("batch_size", BatchSize, None),
    ("fast_decode", FastDecode, False),
]
_SERVER_OPTIONS = [
    ("server", Server, None),
    ("api_key", ApiKey, None),
    ("api_key_file", ApiKeyFile, None),
    ("timeout", ClientTimeout, None),
]


def model_command(command: str) -> Callable:
    """Give the model command ``command`` the options every model command takes (--model with the command's default
    model from the operations table, --revision, --device, --dtype, --threads, --batch-size, --fast-decode,
    --server, --api-key, --timeout), parsed once into the ``backend`` it is called with (in process, or a bt server:
    chosen here, once), after its --format is checked against the table: nothing loads for a format it cannot
    write."""
    from ..operations.table import DEFAULT_MODELS

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function, eval_str=True)  # (the Annotated options, not their names)
        own = [p for name, p in signature.parameters.items() if name != "backend"]
        shared = _MODEL_OPTIONS + _SERVER_OPTIONS
        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                              default=DEFAULT_MODELS[command] if name == "model" else value, annotation=annotation)
            for name, annotation, value in shared
        ]  # fmt: skip

        @functools.wraps(function)
        def run(**values):
            from .. import backend
            from ..backend import ModelOptions
            from ..images import decode_workers, max_image_pixels

            if "fmt" in values:
                check_format(values["fmt"], command)
            max_image_pixels(), decode_workers()  # an environment value that does not parse is said now, not later

            o = {name: values.pop(name) for name, _, _ in shared}
            options = ModelOptions(
                o["model"],
                o["revision"],
                o["device"],
                o["dtype"].value,
                o["threads"],
                o["batch_size"],
                o["fast_decode"],
            )
            key = _api_key(o["api_key"], o["api_key_file"])
            values["backend"] = backend.open_backend(options, o["server"], key, o["timeout"], _warn)
            return function(**values)

        parameters = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + extra
        run.__signature__ = signature.replace(parameters=parameters)
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate


def _api_key(given: str | None, key_file: Path | None) -> str | None:
    """The server's key: from --api-key-file (over BT_API_KEY), or --api-key (said to be visible to others)."""
    on_command_line = given is not None and given != os.environ.get("BT_API_KEY")
    if key_file is not None:
        if on_command_line:
            raise UsageError("--api-key and --api-key-file exclude each other", "give the key one way")
        from ..server.settings import read_key_file

        return read_key_file(key_file)
    if on_command_line:
        warn_key_on_command_line()
    return given


def warn_key_on_command_line() -> None:
    _warn("a key given with --api-key is visible to every user of this machine (ps); use BT_API_KEY or --api-key-file")


def _warn(message: str) -> None:
    from .render import StderrReporter

    StderrReporter().warn(message)


def emit(
    records: Iterable,
    fmt: Format,
    outcome: Outcome,
    reporter,
    separator: str = "\n",
    title: str = "",
) -> None:
    """Render the records (streamed formats as they come), then report: none readable is an error, some skipped
    a partial success (exit 3)."""
    from .render import STREAMED, render, resolve_format

    if resolve_format(fmt.value) not in STREAMED:
        collected = []
        try:
            for record in records:
                collected.append(record)
        except KeyboardInterrupt:  # the records finished so far are worth showing
            render(collected, fmt.value, separator=separator, title=title)
            raise Interrupted(f"interrupted: {len(collected)} record(s) above were finished") from None
        records = collected
        if not records and outcome.skipped:
            raise BtError("none of the images could be read", "see the warnings above")
    if render(records, fmt.value, separator=separator, title=title) == 0 and outcome.skipped:
        raise BtError("none of the images could be read", "see the warnings above")
    reporter.finish(outcome)


def images_and_texts(
    arguments: list[str],
    text: list[str] | None,
    texts_file: str | None,
    null: bool = False,
    reporter=None,
    outcome=None,
) -> tuple[list[ImageSource], list[str]]:
    """Images and texts from arguments in any order, -t/--text and --texts-file; each text checked now (before any
    model loads)."""
    from ..sources import check_texts, read_texts, split_arguments

    image_specs, text_arguments = split_arguments(arguments)
    if "-" in image_specs and texts_file == "-":
        raise BtError(
            "standard input cannot hold both image paths and texts",
            "pass the texts with --texts-file FILE, or the images as arguments",
        )
    texts = read_texts([*text_arguments, *(text or [])], texts_file)
    check_texts(texts)
    return image_sources(image_specs, null, reporter, outcome), texts


def image_sources(specs: list[str], null: bool = False, reporter=None, outcome=None) -> list[ImageSource]:
    """``expand_image_sources``, saying once what was left aside (photos that need an extra), and each thing a walk
    or a list could not use as a skip in ``outcome``."""
    from ..sources import expand_image_sources

    if not specs:
        return []  # (the request refuses it, in the words every way in uses)
    notes: list[str] = []
    left_out: list[tuple[str, str]] = []
    sources = expand_image_sources(specs, null=null, notes=notes, left_out=left_out)
    for note in notes if reporter is not None else ():
        reporter.warn(note)
    for name, why in left_out if outcome is not None else ():
        outcome.skip(name, why, reporter)
    return sources


def only_images(specs: list[str], what: str, hint: str | None = None) -> list[str]:
    """Arguments that must all be image sources; ``hint``: where texts go instead (None: the command takes none)."""
    from ..sources import split_arguments

    images, texts = split_arguments(specs, "-t" if hint is None else None)
    if texts:
        raise BtError(f"{texts[0]!r} is not an image {what}", hint or "pass texts with -t TEXT (or --texts-file FILE)")
    return images


def check_format(fmt: Format, command: str) -> None:
    """Refuse an output format the command does not write (a usage error), as the operations table lists them."""
    from ..operations.table import FORMATS

    formats = FORMATS[command]
    if fmt.value != "auto" and fmt.value not in formats:
        raise UsageError(f"-f {fmt.value} is not a format of bt {command}", f"use one of: auto, {', '.join(formats)}")
