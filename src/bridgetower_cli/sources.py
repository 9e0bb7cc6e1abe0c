"""Where images and texts come from: arguments, files, folder walks, globs, URLs and stdin lists.

One walker serves folders and globs alike: hidden entries skipped, symlinked folders never followed, each real
folder entered once (so a loop or a bind mount cannot repeat or hang a walk), each real file counted once however
many paths reach it. ``within`` (a server's roots) keeps only files whose real path lies inside them.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from .errors import BtError, InputError, TooLarge
from .reading import inside, kind_of
from .walker import _is_dir, folder_files, glob_files, split_glob

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".avif"}
)
HEIF_SUFFIXES = frozenset({".heic", ".heif", ".hif"})  # iPhone photos: with the [heif] extra (pillow-heif)
HEIF_INSTALL = 'pip install "bridgetower-cli[heif]"'
TEXT_FILE_SUFFIXES = frozenset({".txt", ".text", ".csv", ".tsv", ".md", ".json", ".jsonl", ".lst"})


@dataclass(frozen=True)
class ImageSource:
    """One image to read: a local path (absolute), an http(s) URL, or bytes already read (what a bt server gets from
    its clients); ``name`` is how records refer to it."""

    name: str
    path: str | None = None
    url: str | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def is_url(self) -> bool:
        return self.url is not None


MASK = "<mask>"  # BridgeTower's mask token: an argument holding it is a fill-mask text, whatever else it looks like
_URL = re.compile(r"[A-Za-z][\w+.-]*://\S+")
# No white space, and a path separator or a file suffix: "photos/typo/", "cat.jgp", "captions.txt".
_PATH_LIKE = re.compile(r"\S*[/\\]\S*|\S+\.[A-Za-z][A-Za-z0-9]{0,4}")


def split_arguments(items: Iterable[str], text_option: str | None = "-t") -> tuple[list[str], list[str]]:
    """Sort command-line arguments, in any order, into image sources and texts. Anything that exists (a file, a
    folder, a FIFO: the pipeline says why it cannot be read), a URL, a glob that matches and ``-`` are images; an
    argument that looks like a path but names nothing, or a file that is no image (``captions.txt``), is an error
    whose hint names ``text_option``, the command's way to pass it as a text (None: there is none); the rest
    (anything with a space, a ``<mask>``) are texts."""
    images, texts = [], []
    for item in items:
        kind = _kind_of(item, text_option)
        (images if kind == "image" else texts).append(item)
    return images, texts


def _kind_of(item: str, text_option: str | None) -> str:
    if not item.strip():
        return "text"  # an empty text, refused as such
    if item == "-" or _URL.fullmatch(item):
        return "image"
    path = Path(item).expanduser()
    try:
        if path.is_file() and path.suffix.lower() in TEXT_FILE_SUFFIXES:
            hint = f"read texts from it with --texts-file {item}, or pass it as a text with {text_option} {item!r}"
            raise BtError(f"{item} is a text file, not an image", hint if text_option else "name images or folders")
        if os.path.lexists(path):
            return "image"
        if glob.has_magic(item):
            base, pattern = split_glob(str(path))
            if next(glob_files(os.path.abspath(base or "."), base, pattern), None) is not None:
                return "image"
    except (OSError, ValueError):  # a long text is no valid file name
        return "text"
    if _PATH_LIKE.fullmatch(item) and MASK not in item:
        what = "no image files match" if glob.has_magic(item) else "no such file or directory:"
        as_text = f"; to use it as a text, pass {text_option} {item!r}" if text_option else ""
        raise BtError(f"{what} {item}", f"check the path{as_text}")
    return "text"


def heif_available() -> bool:
    """Whether HEIF photos can be read here (the [heif] extra: pillow-heif, registered with Pillow once)."""
    from .images import heif_registered

    return heif_registered()


# -- the walker -------------------------------------------------------------------------------------------------


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > name.rfind(os.sep) + 1 else ""


def is_image_name(name: str) -> bool:
    suffix = _suffix(name)
    return suffix in IMAGE_SUFFIXES or suffix in HEIF_SUFFIXES and heif_available()


# -- expanding sources ----------------------------------------------------------------------------------------


@dataclass
class Expansion:
    """Sources found, and the files left out on the way (a link out of ``within``), with why."""

    sources: list[ImageSource] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)  # photos of a format bt cannot read here, by suffix
    _seen: set = field(default_factory=set)

    def add(self, name: str, path: str, real: str, identity: tuple | None = None) -> None:
        """One image per file, however many names reach it (links, hard links, spellings): known by its (device,
        inode), or (a path that names nothing usable yet: its read says why) by its real path."""
        key = identity or file_identity(real)
        if key not in self._seen:
            self._seen.add(key)
            self.sources.append(ImageSource(name, path=path))


def file_identity(path: str) -> tuple | str:
    try:
        found = os.stat(path)
    except (OSError, ValueError):
        return path
    return (found.st_dev, found.st_ino)


def expand_image_sources(
    specs: Iterable[str],
    stdin: BinaryIO | TextIO | None = None,
    null: bool = False,
    notes: list[str] | None = None,
    left_out: list[tuple[str, str]] | None = None,
) -> list[ImageSource]:
    """Expand files, directories (walked, image files only), globs, URLs and ``-`` (paths on stdin, one per line,
    or NUL-separated with ``null``), one image per file. ``notes`` collects what the user should hear once (photos
    of a format that needs an extra); ``left_out`` the (name, why) of what a walk or a list could not use (a folder
    that cannot be listed): each a skip for the caller to report."""
    expansion = Expansion()
    for spec in specs:
        if spec == "-":
            for path in stdin_paths(stdin, null):
                _listed(path, expansion)
        elif "://" in spec:
            scheme = spec.split("://", 1)[0].lower()
            if scheme not in ("http", "https"):
                raise BtError(f"unsupported URL scheme {scheme}:// in {spec}", "use an http(s) URL or a local path")
            if spec not in expansion._seen:
                expansion._seen.add(spec)
                expansion.sources.append(ImageSource(spec, url=spec))
        else:
            _expand_path(spec, expansion)
    if notes is not None and expansion.ignored:
        counts = ", ".join(f"{n} {suffix}" for suffix, n in sorted(expansion.ignored.items()))
        notes.append(f"{sum(expansion.ignored.values())} files ignored ({counts}: {HEIF_INSTALL} reads them)")
    if left_out is not None:
        left_out += expansion.left_out
    if not expansion.sources and not (left_out and expansion.left_out):
        hint = (
            f"{HEIF_INSTALL} reads .heic photos"
            if expansion.ignored
            else "pass image files, directories, globs or URLs"
        )
        raise BtError("no images given", hint)
    return expansion.sources


def stdin_paths(stdin: BinaryIO | TextIO | None, null: bool) -> list[str]:
    """The paths listed on standard input: one per line, or NUL-separated (``find -print0``) with ``null``."""
    stream = stdin if stdin is not None else sys.stdin.buffer
    data = stream.read()
    text = data if isinstance(data, str) else os.fsdecode(data)
    if null:
        return [path for path in text.split("\0") if path]
    if "\0" in text:
        raise BtError("standard input holds NUL characters (a find -print0 list?)", "pass -0/--null to read it")
    lines = (line.removesuffix("\r") for line in text.split("\n"))  # (names as listed: spaces are theirs)
    return [line for line in lines if line.strip() and line != "-"]


def add_found(
    expansion: Expansion, root: str, found: Iterable[tuple[str, str, bool]], within: Sequence[str] | None = None
) -> int:
    """Add the image files of a walk or a glob under the folder ``root``: a file's real path decides its identity
    and, with ``within`` (a server's roots), whether it is admitted. How many image files were found."""
    root_real, cut, count = os.path.realpath(root), len(root), 0
    for name, path, is_link, identity in found:
        if not is_image_name(path):
            if _suffix(path) in HEIF_SUFFIXES:
                expansion.ignored[_suffix(path)] += 1
            continue
        count += 1
        real = os.path.realpath(path) if is_link else root_real + path[cut:]
        if within is not None:
            if not inside(real, within):
                expansion.left_out.append((name, "is a link out of the served folders"))
                continue
            path = real
        expansion.add(name, path, real, identity)
    return count


@dataclass
class Found:
    """A search's or a refresh's images: the sources found (each checked), the folders named (the search's scope),
    and what was left out with why. Made here (``find_here``) or by a server under its roots."""

    sources: list[ImageSource]
    folders: list[Path]
    left_out: list[tuple[str, str]]


def find_here(specs: list[str], walk: bool = True) -> Found:
    """The local image files under ``specs`` (no URLs: an index holds files); ``walk`` False: only the files named
    (the folders still scope a search of the index)."""
    folders = [Path(spec).expanduser() for spec in specs if Path(spec).expanduser().is_dir()]
    named = specs if walk else [spec for spec in specs if not Path(spec).expanduser().is_dir()]
    left_out: list = []
    sources = expand_image_sources(named, left_out=left_out) if named else []
    urls = [s.name for s in sources if s.is_url]
    if urls:
        raise BtError(f"URLs cannot be indexed: {urls[0]}", "download the images and pass the folder")
    return Found(sources, folders, left_out)


def _listed(path: str, expansion: Expansion) -> None:
    """One line of a list on standard input, as a walk finds a file: a folder is walked, a URL fetched, anything
    else is an image to read, whose reading names what is wrong with it (a dangling link, a FIFO, a path that names
    nothing), a skip like any other, never the end of the run."""
    if "://" in path or _is_dir(path):
        try:
            _expand_path(path, expansion)
        except BtError as problem:
            expansion.left_out.append((path, problem.message))
        return
    absolute = os.path.abspath(os.path.expanduser(path))
    why = unusable(absolute)
    if why is not None:
        expansion.left_out.append((path, why))
    else:
        expansion.add(path, absolute, os.path.realpath(absolute))


def unusable(path: str) -> str | None:
    """Why a listed path is no image file to read (in the words reading uses), or None."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a dangling symlink" if os.path.islink(path) else "no such file or directory"
    except (OSError, ValueError) as error:
        return f"cannot read it: {getattr(error, 'strerror', None) or error}"
    return None if stat.S_ISREG(mode) else f"not a regular file ({kind_of(mode)})"


def _expand_path(spec: str, expansion: Expansion) -> None:
    path = Path(spec).expanduser()
    try:
        path.exists()
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or error
        raise BtError(f"not a usable path: {spec[:60]} ({reason})", "check it") from None
    if path.is_dir():
        root, unlisted = os.path.abspath(path), []
        found = add_found(expansion, root, folder_files(root, str(spec), unlisted))
        if not found and unlisted and unlisted[0][0] == str(spec):
            raise BtError(f"cannot list the folder {spec}: {unlisted[0][1]}", "check its permissions")
        expansion.left_out += [(name, f"a folder that cannot be listed: {why}") for name, why in unlisted]
        if not found and not unlisted:
            hint = f"image files end in {', '.join(sorted(IMAGE_SUFFIXES))}"
            if expansion.ignored:
                hint = f"its .heic photos need {HEIF_INSTALL}"
            raise BtError(f"no image files in directory {spec}", hint)
        return
    if path.is_file():
        absolute = os.path.abspath(path)
        expansion.add(spec, absolute, os.path.realpath(absolute))
        return
    if glob.has_magic(spec):
        base, pattern = split_glob(str(path))
        root, unlisted = os.path.abspath(base or "."), []
        found = add_found(expansion, root, glob_files(root, base, pattern, unlisted))
        expansion.left_out += [(name, f"a folder that cannot be listed: {why}") for name, why in unlisted]
        if not found and not unlisted:
            raise BtError(f"no image files match {spec}", "check the pattern; quote it to let bt expand it")
        return
    if path.is_symlink():
        raise BtError(f"{spec} is a dangling symlink", "point it at an image, or remove it")
    if path.exists():
        raise BtError(f"{spec} is {unusable(os.path.abspath(path))}", "pass image files, directories, globs or URLs")
    raise BtError(f"no such file or directory: {spec}", "check the path")


# -- reading ----------------------------------------------------------------------------------------------------


# -- texts ------------------------------------------------------------------------------------------------------


def read_texts(arguments: Iterable[str], texts_file: str | None, stdin: TextIO | None = None) -> list[str]:
    """Texts from arguments and/or a file with one text per line (``-`` = stdin; blank lines skipped), each once
    (each then checked, as every way in checks it, by the request it goes into: ``check_texts``)."""
    texts = list(arguments)
    if texts_file is not None:
        if texts_file == "-":
            lines = (stdin or sys.stdin).read().removeprefix("\ufeff").splitlines()
        else:
            try:  # (utf-8-sig: a byte-order mark, as some editors write, is not part of the first caption)
                lines = Path(texts_file).expanduser().read_text(encoding="utf-8-sig").splitlines()
            except OSError as error:
                raise BtError(
                    f"cannot read texts file {texts_file}: {error.strerror or error}", "check the path"
                ) from None
            except UnicodeDecodeError:
                raise BtError(f"texts file {texts_file} is not UTF-8 text", "save it as UTF-8") from None
        texts += [line.strip() for line in lines if line.strip()]
    if not texts:
        raise BtError("no texts given", "pass texts as arguments, with -t TEXT or with --texts-file FILE")
    return list(dict.fromkeys(texts))  # a repeated text counts once, as a repeated image does


def check_texts(texts: Sequence[str], limit: int | None = None) -> None:
    """Refuse texts a model cannot take: empty ones, lone surrogates (not text), more than ``limit`` of them."""
    if limit is not None and len(texts) > limit:
        raise TooLarge(f"{len(texts)} texts, over the limit of {limit}", "send fewer texts per request")
    for k, text in enumerate(texts):
        if not text.strip():
            raise InputError(f"text {k + 1} is empty", "give every text some words")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # (an argument's byte that is not UTF-8 arrives as a lone surrogate)
            shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")[:60]
            raise InputError(f"text {k + 1} is not valid UTF-8 ({shown!r})", "pass texts as UTF-8") from None
