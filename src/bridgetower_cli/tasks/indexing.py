"""Keeping the embedding index up to date for a set of image files (``bt index``, and ``bt retrieve`` before it
searches)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError, Interrupted, NoSpace
from ..index.files import content_hash, default_index_path, file_states
from ..index.store import EmbeddingIndex
from ..model.hub import embedding_identity
from ..model.runtime import Runtime
from ..records import Outcome, RefreshStats, Reporter
from ..sources import ImageSource
from .batching import chunks, encode_image_batches, warn_padded


def _embedded_locally(runtime, todo, batch_size: int, outcome: Outcome, reporter: Reporter):
    """Batches of (rows, failures, when taken) for the index, embedded in this process; each row's content hash and
    date are those of the bytes its embedding was made from (a photo replaced since it was planned is indexed as
    what was embedded)."""
    for chunk in chunks(todo, batch_size):
        state_of = {source.name: state for source, state in chunk}
        skipped_before = len(outcome.skipped)
        rows, contents, taken = [], {}, {}
        sources = [s for s, _ in chunk]
        for batch in encode_image_batches(runtime, sources, batch_size, outcome, reporter, digests=contents):
            for source, image in batch:
                state, content = state_of[source.name], contents[id(source)]
                rows.append((state, content.hash, image.itc_embedding.float().cpu().tolist()))
                taken[state.path] = content.taken
        yield rows, [(state_of[s.name], s.reason) for s in outcome.skipped[skipped_before:]], taken


def _embedded_by(engine, todo, batch_size: int, outcome: Outcome, reporter: Reporter):
    """Batches of (rows, failures, when taken: unknown) for the index, embedded by ``engine`` (Ray), reported as the
    local engine does."""
    state_of = {source.path: (source, state) for source, state in todo}
    for batch in engine.embed([source for source, _ in todo], batch_size):
        rows, failures = [], []
        for item in batch:
            source, state = state_of[item.path]
            if item.padded:
                warn_padded(reporter, source.name, item.padded)
            if item.error:
                outcome.skip(source.name, item.error, reporter)
                failures.append((state, item.error))
            else:
                rows.append((state, item.hash, item.embedding.tolist()))
        yield rows, failures, {}


def open_index(
    runtime: Runtime, index_file: Path | None = None, rebuild: bool = False, write: bool = True, wait_s: float = 60.0
) -> EmbeddingIndex:
    """The embedding index for the loaded checkpoint (``index_file``, else the default path): to refresh
    (``write``), or to query as it is (read-only: never waits for a writer, works on a read-only file system)."""
    loaded = runtime.loaded
    dim = loaded.network.config.contrastive_hidden_size
    path = index_file or default_index_path()
    identity, label = embedding_identity(loaded.path, loaded.name, loaded.precision)
    if write:
        return EmbeddingIndex.for_writing(path, identity, dim, rebuild, label, wait_s=wait_s)
    return EmbeddingIndex.for_reading(path, identity, dim, label)


def index_images(
    runtime: Runtime | None,
    index: EmbeddingIndex,
    sources: Sequence[ImageSource],
    outcome: Outcome,
    folders: Sequence[Path],
    batch_size: int,
    reporter: Reporter,
    engine=None,
) -> RefreshStats:
    """``bt index``: the opened ``index`` brought up to date with ``sources`` (``refresh_index``), then closed;
    says what it did."""
    with index:
        stats = refresh_index(runtime, index, sources, outcome, folders, batch_size, reporter, engine=engine)
        reporter.info(f"{stats.line()}; {index.count()} images in {os.path.abspath(index.path)}")
    return stats


def refresh_index(
    runtime: Runtime,
    index: EmbeddingIndex,
    sources: Sequence[ImageSource],
    outcome: Outcome,
    folders: Sequence[Path] = (),
    batch_size: int = 8,
    reporter: Reporter | None = None,
    engine=None,
) -> RefreshStats:
    """Bring the index up to date for ``sources``: new and changed files indexed (a file whose content is already
    indexed, moved or renamed, reuses that embedding), rows of files gone from ``folders`` dropped. A file that
    vanished or is a dangling link is skipped, named; files another bt process is embedding are left to it. Each
    batch is committed on its own, so an interrupted refresh keeps what it finished. ``engine``
    (``engines.RayEngine``) embeds on Ray instead of ``runtime``."""
    reporter = reporter or Reporter()
    by_path = {source.path: source for source in sources}
    states, missing = file_states(by_path)
    for path, reason in missing:
        outcome.skip(by_path[path].name, reason, reporter)
    with index.writing():
        plan = index.plan(states, folders)
        hashes = {}
        with reporter.progress(len(plan.to_embed), "hashing new and changed files") as advance:
            for state in plan.to_embed:  # (a long read on a large library: its progress also tells a client it moves)
                with contextlib.suppress(InputError):  # unreadable: embedding it fails and records why
                    hashes[state.path] = content_hash(state.path)
                advance(1)
        linked = set(index.link([(s, hashes[s.path]) for s in plan.to_embed if s.path in hashes]))
        index.drop(plan.to_drop, folders, plan.unseen)
        stats = RefreshStats(removed=len(plan.to_drop), unchanged=plan.unchanged, skipped=len(missing))
        stats.reused = len(linked)
        pending = [state for state in plan.to_embed if state.path not in linked]
        claimed, holder = index.claim(pending)
        stats.elsewhere = len(pending) - len(claimed)
        if holder is not None:
            reporter.warn(f"{stats.elsewhere} files are being indexed by another bt process: left to it")
        state_of = {state.path: state for state in plan.to_embed}
        todo = [(by_path[path], state_of[path]) for path in claimed]
        batches = (
            _embedded_locally(runtime, todo, batch_size, outcome, reporter)
            if engine is None
            else _embedded_by(engine, todo, batch_size, outcome, reporter)
        )
        done, stored = 0, set(linked)
        with reporter.progress(len(todo), Interrupted.INDEXING) as advance:
            try:
                for rows, failures, taken in batches:
                    index.store(rows, failures, taken)
                    stats.failed += len(failures)
                    stored.update(state.path for state, *_ in rows)
                    done += len(rows) + len(failures)
                    advance(len(rows) + len(failures))
            except KeyboardInterrupt:  # every batch before this one is committed
                raise Interrupted.indexing(done, len(todo)) from None
        # Each file seen counts once: new, changed, unchanged, failed, left to another process, or skipped.
        stats.changed = len(stored & plan.changed)
        stats.new = len(stored) - stats.changed
    warning = index.maintain()
    if warning:
        reporter.warn(warning)
    if index.tier_wanted():  # (a large index: its approximate tier, built anew once it lags)
        with reporter.progress(1, "building the search tier") as advance:
            try:
                index.build_tier()
            except NoSpace as full:  # (searches stay exact meanwhile: slower, never wrong)
                reporter.warn(f"index: {full.message}; searches are exact until it can be built")
            advance(1)
    return stats


def run_refresh(runtime: Runtime, q, outcome: Outcome, reporter: Reporter, batch_size: int) -> RefreshStats:
    """The ``index`` operation (``operations.Refresh``, its files and folders found): open, refresh, close."""
    opened = open_index(runtime, q.path, q.rebuild, wait_s=q.wait_s)
    if q.tier_from is not None:
        opened.set_tier_from(q.tier_from)
    return index_images(runtime, opened, q.files, outcome, q.folders, batch_size, reporter)
