"""What a client may make the server touch: paths under the roots (resolved, then checked, every file found by a
walk or a glob too), indexes by plain name in the server's own folder, and models from an allow-list.

Every refusal is the same for a path that exists and one that does not, and never echoes what a file holds.

A server of one's own (``bt serve --uds``: a socket only its user can open) acts with that user's rights, as bt in
process would: any absolute path, an index by its file's path, any model the client resolved."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import Forbidden, InputError
from ..model.catalog import KNOWN_CHECKPOINTS
from ..reading import inside
from ..sources import Expansion, Found, add_found, folder_files, glob_files, split_glob
from .owned import OwnedFolder
from .settings import Settings

INDEX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")
DEFAULT_INDEX = "default"


class Policy:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.own = settings.own
        self.roots = [os.sep] if self.own else [os.path.realpath(root) for root in settings.allow_paths]
        self.models = _allowed_models(settings)
        self.owned = OwnedFolder(settings.index_dir)
        self.owned.verify()  # (said at start-up, and again at every use)

    # -- paths ------------------------------------------------------------------------------------------------

    def check(self, given: str, what: str = "path") -> str:
        """The real path of an absolute path a client names (symlinks and ``..`` resolved as the kernel would), if it
        lies inside a root; 403 otherwise, alike for a missing path. Nothing reads ``given`` again afterwards."""
        if "\0" in given:
            raise InputError(f"the {what} {given!r} holds a NUL character", "send plain paths")
        if not os.path.isabs(given):
            raise InputError(f"the {what} {given!r} is not an absolute path", "send absolute paths")
        if not self.roots:
            raise Forbidden(f"this server opens no paths (the {what} {given})", "start it with --allow-path DIR")
        if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in given.split(os.sep)):
            raise InputError(f"the {what} {given[:60]}… has a name over 255 bytes", "no file system holds one")
        # Resolved a component at a time, as the kernel does (links, then ".."), and refused as soon as the path
        # leaves the roots and what lies above them: nothing outside is resolved further, so whether an outside
        # name is a link or a folder never changes the answer.
        outside = Forbidden(f"the {what} {given} is not under the server's --allow-path roots", "see bt serve --help")
        real = os.sep
        for part in Path(given).parts[1:]:
            real = os.path.realpath(os.path.join(real, part))
            if not inside(real, self.roots) and not any(inside(root, [real]) for root in self.roots):
                raise outside
        if not inside(real, self.roots):
            raise outside
        return real

    def sources(self, given: list[str], walk: bool = True) -> Found:
        """The images under ``given`` absolute paths and globs: each resolved once and checked, each file a walk or
        a glob finds checked after resolution, globs matched by bt's walker inside the roots. ``walk`` False: only
        the files named (the folders still scope a search of the index)."""
        expansion, folders, unlisted = Expansion(), [], []
        for spec in given:
            if glob.has_magic(spec):  # (a glob names files: expanded with or without a walk of the folders)
                base, pattern = split_glob(spec)
                root = self.check(base or os.sep, "source")
                found = add_found(expansion, root, glob_files(root, base, pattern, unlisted), self.roots)
            else:
                real = self.check(spec, "source")
                if os.path.isdir(real):
                    folders.append(Path(real))
                    walked = folder_files(real, spec, unlisted)
                    found = add_found(expansion, real, walked, self.roots) if walk else 1
                elif os.path.isfile(real):
                    found = 1
                    expansion.add(spec, real, real)
                else:
                    raise InputError(f"no such file or directory: {spec}", "check the path")
            if not found and not unlisted:
                raise InputError(f"no image files in {spec}", "check the path or the pattern")
        expansion.left_out += [(name, f"a folder that cannot be listed: {why}") for name, why in unlisted]
        return Found(expansion.sources, folders, expansion.left_out)

    # -- indexes ----------------------------------------------------------------------------------------------

    def index(self, name: str | None, rebuild: bool) -> Path:
        """The index file a request names: a plain name in the server's own index folder (never a path or a glob);
        ``rebuild`` needs the name spelled out, so no request wipes the default index by leaving it out. (A server
        of one's own: the index file's absolute path.)"""
        if self.own:
            if name is None:
                raise InputError("name the index file", "send its absolute path")
            self.check(name, "index")
            return Path(name)  # (as the client named it: the index resolves it, as in process)
        if name is None:
            if rebuild:
                raise InputError("rebuild needs an index name", f'name it: "index": "{DEFAULT_INDEX}"')
            name = DEFAULT_INDEX
        if not INDEX_NAME.fullmatch(name) or len(name) > 100:
            raise InputError(
                f"the index {name!r} is not a plain name", "letters, digits, '.', '_' and '-', as in photos-2024"
            )
        path = self.owned.verify() / f"{name}.sqlite"
        for own in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if own.is_symlink():
                raise Forbidden(f"the index {name} is a symlink", "the server opens only index files it created")
        return path

    # -- models -----------------------------------------------------------------------------------------------

    def model(self, requested: str, shown: str | None = None) -> Allowed:
        """An allowed model, by any spelling of it (a directory by its resolved path), so that one model is one
        loaded copy; 403 naming the allowed ones for anything else, alike whether it exists or not. (A server of
        one's own: the checkpoint folder the client resolved, named in records as the client named it.)"""
        if self.own:
            folder = self.check(requested, "model")
            return Allowed(f"{folder}\0{shown or requested}", shown or requested, hub=False, path=folder)
        if requested in self.models:
            return self.models[requested]
        if "\0" not in requested and os.path.isabs(requested):
            resolved = os.path.realpath(requested)
            if resolved in self.models:
                return self.models[resolved]
        shown = ", ".join(sorted({allowed.shown for allowed in self.models.values()})) or "none"
        raise Forbidden(f"the model {requested} is not served here", f"this server serves: {shown}")


@dataclass(frozen=True)
class Allowed:
    """A model a request may use: its canonical name (a resolved directory or a hub id), how it was given, and
    whether it comes from the hub cache (never from a folder that happens to share its name)."""

    name: str
    shown: str
    hub: bool
    path: str | None = None  # the folder it loads from (a hub id: looked up in the hub cache)


def _allowed_models(settings: Settings) -> dict[str, Allowed]:
    """Every accepted spelling -> the model: those given with -m (a directory also by its resolved path) and,
    unless --no-pull, the public checkpoints."""
    allowed: dict[str, Allowed] = {}
    for given in settings.models:
        path = os.path.expanduser(given)
        if os.path.isdir(path):
            model = Allowed(os.path.realpath(path), given, hub=False)
            allowed[given] = allowed[model.name] = model
        else:
            allowed[given] = Allowed(given, given, hub=True)
    if not settings.no_pull:
        for checkpoint in KNOWN_CHECKPOINTS:
            allowed.setdefault(checkpoint.id, Allowed(checkpoint.id, checkpoint.id, hub=True))
    return allowed
