"""What a client may make the server touch: paths under the roots (resolved, then checked, every file found by a
walk or a glob too), indexes by plain name in the server's own folder, and models from an allow-list.

Every refusal is the same for a path that exists and one that does not, and never echoes what a file holds."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BtError, Forbidden, InputError
from ..model.catalog import KNOWN_CHECKPOINTS
from ..sources import Expansion, expand, inside
from .settings import Settings

INDEX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")
DEFAULT_INDEX = "default"


@dataclass
class Served:
    """The images of a request: the sources found (each checked), the folders they were walked from (the search's
    scope), and the files left out with why."""

    expansion: Expansion
    folders: list[Path]


class Policy:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.roots = [os.path.realpath(root) for root in settings.allow_paths]
        self.models = _allowed_models(settings)

    # -- paths ------------------------------------------------------------------------------------------------

    def check(self, given: str, what: str = "path") -> str:
        """``given`` resolved (symlinks included) and inside a root; 403 otherwise, alike for missing paths."""
        if "\0" in given:
            raise InputError(f"the {what} {given!r} holds a NUL character", "send plain paths")
        if not self.roots:
            raise Forbidden(f"this server opens no paths (the {what} {given})", "start it with --allow-path DIR")
        if not inside(os.path.realpath(os.path.abspath(given)), self.roots):
            raise Forbidden(f"the {what} {given} is not under the server's --allow-path roots", "see bt serve --help")
        return os.path.abspath(given)

    def sources(self, given: list[str], walk: bool = True) -> Served:
        """The images under ``given`` paths and globs: each literal part checked, each file found checked after
        resolution; globs expanded only inside the roots. ``walk`` False: only the files named are expanded (the
        folders still scope a search of the index)."""
        specs, folders = [], []
        for spec in given:
            magic = glob.has_magic(spec)
            base = spec[: re.search(r"[*?[]", spec).start()] if magic else spec
            self.check(os.path.dirname(base) if magic else base, "source")
            if not magic and os.path.isdir(spec):
                folders.append(Path(os.path.abspath(spec)))
                if not walk:
                    continue
            specs.append(spec)
        try:
            expansion = expand(specs, within=self.roots) if specs else Expansion()
        except BtError as error:  # (nothing found: the same answer whatever the reason)
            raise InputError(error.message, error.hint) from None
        return Served(expansion, folders)

    # -- indexes ----------------------------------------------------------------------------------------------

    def index(self, name: str | None, rebuild: bool) -> Path:
        """The index file a request names: a plain name in the server's own index folder (never a path or a glob);
        ``rebuild`` needs the name spelled out, so no request wipes the default index by leaving it out."""
        if name is None:
            if rebuild:
                raise InputError("rebuild needs an index name", f'name it: "index": "{DEFAULT_INDEX}"')
            name = DEFAULT_INDEX
        if not INDEX_NAME.fullmatch(name) or len(name) > 100:
            raise InputError(
                f"the index {name!r} is not a plain name", "letters, digits, '.', '_' and '-', as in photos-2024"
            )
        folder = self.settings.index_dir
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder / f"{name}.sqlite"

    # -- models -----------------------------------------------------------------------------------------------

    def model(self, requested: str) -> str:
        """The canonical name of an allowed model (a resolved directory, or a hub id), so that every spelling of
        one model loads one copy; 403 naming the allowed ones for anything else."""
        if requested in self.models:
            return requested
        if "\0" not in requested and not requested.startswith("~"):
            resolved = os.path.realpath(requested)
            if resolved in self.models:
                return resolved
        allowed = ", ".join(sorted(self.models)) or "none"
        raise Forbidden(f"the model {requested} is not served here", f"this server serves: {allowed}")


def _canonical(model: str) -> str:
    """A model directory as its resolved path; a hub id as it is."""
    path = os.path.expanduser(model)
    return os.path.realpath(path) if os.path.isdir(path) else model


def _allowed_models(settings: Settings) -> set[str]:
    """The models given with -m (directories resolved) and, unless --no-pull, the public checkpoints."""
    allowed = {_canonical(m) for m in settings.models}
    if not settings.no_pull:
        allowed |= {checkpoint.id for checkpoint in KNOWN_CHECKPOINTS}
    return allowed
