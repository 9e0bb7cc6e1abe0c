"""One walker for folders and globs: hidden entries skipped, symlinked folders never followed, each real folder
entered once (so a loop or a bind mount cannot repeat or hang a walk), a folder that cannot be listed said, never
taken for an empty one."""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterator, Sequence

from . import cancel


def walk(root: str, depth: int | None = None, unlisted: list | None = None) -> Iterator[tuple[str, bool, tuple]]:
    """(path, is a symlink, its identity) of every non-folder entry under ``root`` (``depth`` levels down; None:
    all), sorted by path; the identity is (device, inode), free from the folder's listing (a symlink's: None, its
    target decides). Hidden entries are skipped, symlinked folders never followed, each real folder entered once; a
    folder that cannot be listed goes to ``unlisted`` as (path, why), never taken for an empty one. One scandir pass
    per folder and string slicing instead of path joins: 100,000 files in ~0.3 s."""
    found: list[tuple[str, bool, tuple | None]] = []
    seen: set[tuple[int, int]] = set()
    folders = [(root, 0)]
    while folders:
        cancel.check()
        folder, level = folders.pop()
        try:
            identity = os.stat(folder)
            entries = os.scandir(folder)
        except OSError as error:  # unreadable or vanished: said, never an empty folder
            if unlisted is not None and not isinstance(error, FileNotFoundError):
                unlisted.append((folder, (error.strerror or str(error)).lower()))
            continue
        if (identity.st_dev, identity.st_ino) in seen:
            entries.close()
            continue
        seen.add((identity.st_dev, identity.st_ino))
        with entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    is_dir, is_link = entry.is_dir(follow_symlinks=False), entry.is_symlink()
                except OSError:
                    continue
                if is_dir:
                    if depth is None or level + 1 < depth:
                        folders.append((entry.path, level + 1))
                elif not (is_link and _is_dir(entry.path)):
                    found.append((entry.path, is_link, None if is_link else (identity.st_dev, entry.inode())))
    found.sort()
    return iter(found)


def _is_dir(path: str) -> bool:
    try:
        return os.path.isdir(path)
    except (OSError, ValueError):
        return False


def _matches(pattern: Sequence[str], names: Sequence[str]) -> bool:
    """Whether a relative path (its names) matches a glob pattern (its names): ``*``, ``?`` and ``[...]`` within
    one name, ``**`` any number of folders. Dynamic programming over (pattern, path) positions: time linear in
    their product, whatever the number of ``**`` (a backtracking matcher is exponential in it)."""
    pattern = [p for k, p in enumerate(pattern) if not (p == "**" and k and pattern[k - 1] == "**")]
    reachable = {0}  # pattern positions that match the names read so far
    for name in names:
        expanded = set(reachable)
        for position in reachable:  # a ** may match no folder at all
            while position < len(pattern) and pattern[position] == "**":
                position += 1
                expanded.add(position)
        step = set()
        for position in expanded:
            if position < len(pattern):
                if pattern[position] == "**":
                    step.add(position)  # ** takes this name and may take more
                elif fnmatch.fnmatchcase(name, pattern[position]):
                    step.add(position + 1)
        reachable = step
        if not reachable:
            return False
    return any(all(p == "**" for p in pattern[position:]) for position in reachable)


def glob_files(root: str, shown: str, pattern: Sequence[str], unlisted: list | None = None) -> Iterator[tuple]:
    """(name, path, is a symlink, identity) of the files under the folder ``root`` whose relative path matches
    ``pattern`` (its names), named from ``shown``: found by ``walk``, so never through a symlinked folder, never
    twice; the folders it could not list in ``unlisted``, named likewise."""
    depth = None if "**" in pattern else len(pattern)
    cut = len(os.path.join(root, ""))
    problems: list = []
    for path, is_link, identity in walk(root, depth, problems):
        relative = path[cut:]
        if _matches(pattern, relative.split(os.sep)):
            yield os.path.join(shown, relative) if shown else relative, path, is_link, identity
    for folder, why in problems if unlisted is not None else ():
        unlisted.append((os.path.join(shown, folder[cut:]) if folder != root else shown or root, why))


def split_glob(pattern: str) -> tuple[str, list[str]]:
    """A glob pattern as (its literal folder, the names of the rest, from the first one with a wildcard)."""
    names = pattern.split(os.sep)
    first = next(k for k, name in enumerate(names) if glob.has_magic(name))
    return os.sep.join(names[:first]) or (os.sep if pattern.startswith(os.sep) else ""), names[first:]


def folder_files(root: str, shown: str, unlisted: list | None = None) -> Iterator[tuple]:
    """(name, absolute path, is a symlink, identity) of the files of a folder walk, named from the folder as given;
    the folders it could not list in ``unlisted``, named likewise."""
    prefix = shown if shown.endswith(os.sep) else shown + os.sep
    cut = len(os.path.join(root, ""))
    problems: list = []
    for path, is_link, identity in walk(root, None, problems):
        yield prefix + path[cut:], path, is_link, identity
    for folder, why in problems if unlisted is not None else ():
        unlisted.append((prefix + folder[cut:] if folder != root else shown, why))
