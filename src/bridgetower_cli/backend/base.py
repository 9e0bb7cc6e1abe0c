"""What every backend shares: the options of a model command, the interface itself (one ``run`` for every
operation of ``operations``), and where a search's or an index refresh's images are found (on the caller's side,
wherever the work runs)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UsageError
from ..model.catalog import check_device, check_dtype
from ..operations import Refresh, Search
from ..records import Outcome, Reporter
from ..sources import find_here


@dataclass(frozen=True)
class ModelOptions:
    """The options every model command takes: which checkpoint, where and how it runs. Checked when made, so a bad
    device or dtype is refused before anything loads, from the command line and ``bt.load`` alike."""

    model: str
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    batch_size: int | None = None
    fast_decode: bool = False  # JPEGs read at a reduced scale (images.decode_image)

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise UsageError("no model named", "pass a hub id or a checkpoint folder")
        check_device(self.device)
        check_dtype(self.dtype)
        for name in ("threads", "batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UsageError(f"{name.replace('_', '-')} must be a whole number of 1 or more, not {value!r}")


class Backend:
    """Where the work runs: ``run`` takes any request of ``operations`` and returns its records (or its one record),
    reporting skips into ``outcome`` and messages to ``reporter`` (facts beside the records in ``reporter.facts``)."""

    def __init__(self, options: ModelOptions):
        self.options = options

    def run(self, request, outcome: Outcome, reporter: Reporter):
        raise NotImplementedError

    def in_process(self) -> Backend:
        """This backend's model in this process (what only runs here: an index's repair)."""
        raise NotImplementedError


def located(request, outcome: Outcome | None = None, reporter: Reporter | None = None, find=find_here):
    """A search or an index refresh with its files and folders found by ``find`` (here, or a server under its
    roots), from its specs: every image under them (a search with refresh off: no walk, the files named, and what
    the index holds under the folders named, all of it if none); what a walk could not use is a skip in
    ``outcome``. Any other request as it is."""
    if not isinstance(request, (Search, Refresh)) or request.files is not None:
        return request
    walk = isinstance(request, Refresh) or request.refresh
    found = find(request.specs, walk=walk)
    for name, why in found.left_out if outcome is not None else ():
        outcome.skip(name, why, reporter)
    folders = found.folders
    if not walk and not request.specs:
        folders = [Path(os.sep)]  # the whole index
    return replace(request, files=found.sources, folders=folders)
