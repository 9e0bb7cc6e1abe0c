"""What ``bt --help`` shows, without Typer: the commands (each one's summary and where it lives) and the
top-level help, drawn with rich as Typer draws it (a test holds the two equal). ``bt --help`` is the call people
make most often at a prompt; Typer and its rich help renderer alone take longer to import than this whole module
takes to print it."""

from __future__ import annotations

from typing import NamedTuple

HELP = "BridgeTower vision-language model at the shell prompt: score, fill-mask, embed, retrieve, classify."
OPTIONS = (  # the group's options, as Typer lists them: (long, short, help)
    ("--version", "-V", "Show the version."),
    ("--install-completion", "", "Install completion for the current shell."),
    ("--show-completion", "", "Show completion for the current shell, to copy it or customize the installation."),
    ("--help", "-h", "Show this message and exit."),
)


class Entry(NamedTuple):
    """A command as ``bt --help`` lists it (its docstring's first line, a test holds them equal) and where it lives:
    ``module:function:EPILOG`` in this package, imported only when the command runs or shows its own help."""

    summary: str
    where: str


COMMANDS = {
    "score": Entry(
        "Image-text matching (ITM head) for every image x text pair; per image, the best match probability first.",
        "pairs:score:SCORE_EPILOG",
    ),
    "fill-mask": Entry(
        "Predict the <mask> words of each text, conditioned on each image (MLM head).",
        "pairs:fill_mask:FILL_MASK_EPILOG",
    ),
    "embed": Entry(
        "L2-normalised ITC embeddings of images, texts, or (image, text) pairs (--kind cross).", "embed:embed:EPILOG"
    ),
    "retrieve": Entry(
        "Rank images for a text or like an image (over a persistent index, ITM rerank), or texts for an image.",
        "retrieval:retrieve:RETRIEVE_EPILOG",
    ),
    "index": Entry(
        "Build or refresh the retrieval index of local images; --stats, --prune, --check, --repair.",
        "retrieval:index:INDEX_EPILOG",
    ),
    "explain": Entry(
        "Where in each image the model looks for each text: Grad-CAM heat maps (ITM head), as pictures and numbers.",
        "pairs:explain:EXPLAIN_EPILOG",
    ),
    "classify": Entry(
        "Zero-shot labels for images: the most probable of --labels for each, by ITC, ITM or both.",
        "classify:classify:EPILOG",
    ),
    "serve": Entry(
        "Keep models loaded and answer every command (--server URL, env BT_SERVER; or --server auto) over HTTP.",
        "serve:serve:EPILOG",
    ),
    "eval": Entry(
        "Retrieval recall on a caption set, or zero-shot accuracy on an ImageFolder (--task classification).",
        "evaluate:evaluate:EPILOG",
    ),
    "models": Entry(
        "The public BridgeTower checkpoints: their heads, image size, and whether they are in the local cache.",
        "info:models:MODELS_EPILOG",
    ),
    "doctor": Entry(
        "What bt runs on: versions, device and dtype, threads, the cache and index paths, the cached checkpoints.",
        "info:doctor:DOCTOR_EPILOG",
    ),
}


def print_help() -> None:
    """The top-level help, as Typer's rich help prints it."""
    import os

    from rich.columns import Columns
    from rich.console import Console
    from rich.highlighter import RegexHighlighter
    from rich.padding import Padding
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text
    from rich.theme import Theme

    class Options(RegexHighlighter):
        highlights = [r"(^|\W)(?P<switch>\-\w+)(?![a-zA-Z0-9])", r"(^|\W)(?P<option>\-\-[\w\-]+)(?![a-zA-Z0-9])",
                      r"(?P<types>\<[^\>]+\>)", r"(?P<usage>Usage: )"]  # fmt: skip

    def text(words: str) -> Text:
        return Options()(Text.from_markup(words))

    theme = Theme({"option": "bold cyan", "switch": "bold green", "types": "bold yellow", "usage": "yellow"})
    width = int(os.environ["TERMINAL_WIDTH"]) if os.environ.get("TERMINAL_WIDTH") else None
    console = Console(theme=theme, highlighter=Options(), width=width)
    console.print(Padding(Options()("Usage: bt [OPTIONS] COMMAND [ARGS]..."), 1), style="bold")
    console.print(Padding(text(HELP), (0, 1, 1, 1)))
    options = Table(highlight=True, show_header=False, expand=True, box=None, pad_edge=False, padding=(0, 1))
    for long, short, help_text in OPTIONS:
        options.add_row(Options()(long), Options()(short), Text(""), Text(""), Text(""), Columns([text(help_text)]))
    console.print(Panel(options, border_style="dim", title="Options", title_align="left"))
    commands = Table(highlight=False, show_header=False, expand=True, box=None, pad_edge=False, padding=(0, 1))
    commands.add_column(style="bold cyan", no_wrap=True, width=max(map(len, COMMANDS)))
    commands.add_column("Description", justify="left", no_wrap=False, ratio=10)
    for name, entry in COMMANDS.items():
        commands.add_row(Text(name), text(entry.summary))
    console.print(Panel(commands, border_style="dim", title="Commands", title_align="left"))
    console.print()  # (click then echoes the help string Typer leaves empty: a blank line)
