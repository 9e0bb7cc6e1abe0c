"""An index's check and repair (``bt index --check`` / ``--repair``, ``Model.check_index``, ``/v1/index/check``):
every row verified against its checksum; a repair mends what the check names, by its kind (``IndexCheck.repair``)."""

from __future__ import annotations

import os

from ..errors import BtError
from ..index.files import default_index_path
from ..index.store import EmbeddingIndex
from ..model.hub import embedding_identity
from ..records import IndexCheck, Outcome, Reporter
from ..sources import ImageSource
from . import indexing


def check_index(runtime, q, outcome: Outcome, reporter: Reporter, batch_size: int) -> IndexCheck:
    """The ``check_index`` operation (``operations.CheckIndex``): verify every row; with ``repair``, embed again
    exactly the damaged rows (the model must be the index's) and verify again."""
    path = q.index or default_index_path()
    if q.repair:
        opened = EmbeddingIndex.for_writing(path, None, None, wait_s=q.wait_s, check=False)
    else:
        opened = EmbeddingIndex.for_reading(path, check=False)
    with opened:
        with reporter.progress(opened.count(), "checking the index") as advance:
            report = opened.verify(advance)
        if q.repair and not report.sound:
            report = _repair(runtime, opened, report, batch_size, reporter)
    return report


def _repair(runtime, index: EmbeddingIndex, report: IndexCheck, batch_size: int, reporter: Reporter) -> IndexCheck:
    """Forget the damaged rows (a new vector file if its own is missing or foreign; the float16 copy written again
    from the vectors), embed their files again."""
    if report.repair == "rebuild":
        return report  # the catalog itself: only --rebuild can mend that
    if report.repair == "tier":
        index.build_tier()  # (from the vectors: nothing to embed, no model)
        return index.verify()
    loaded = runtime.loaded
    if embedding_identity(loaded.path, loaded.name, loaded.precision)[0] != index.fingerprint:
        hint = f"repair it with the model (and --dtype) it was built with: {index.label}"
        raise BtError(f"the index {index.path} was built with {index.label}, not {loaded.name}", hint)
    if report.repair == "float16 copy":
        index.copy_to_half()  # a cache: written again from the vectors, nothing to embed
    index.forget(report.damaged_paths, new_vector_file=report.repair == "new vector file")
    present = [p for p in report.damaged_paths if os.path.exists(p)]
    if present:
        sources = [ImageSource(p, path=p) for p in present]
        stats = indexing.refresh_index(runtime, index, sources, Outcome(), (), batch_size, reporter)
        gone = len(report.damaged_paths) - len(present)
        reporter.info(f"repaired: {stats.line()}; {gone} rows of files gone dropped")
    return index.verify()
