"""The work in this process."""

from __future__ import annotations

import gc

from ..operations import Refresh, operation_of
from ..records import Outcome, RefreshStats, Reporter
from .base import Backend, ModelOptions, located
from .preflight import preflight


class Local(Backend):
    """The work in this process: the checkpoint loaded on first use (resolved first, fast and without torch)."""

    def __init__(self, options: ModelOptions):
        super().__init__(options)
        self._runtime = None

    def runtime(self, reporter: Reporter, needs: tuple[str, ...], preferred: tuple[str, ...] = ()):
        """(the runtime, the batch size), loading the checkpoint the first time; a head in ``needs`` it lacks is
        refused, naming a public checkpoint with ``needs`` and ``preferred``."""
        if self._runtime is None:
            from ..model.hub import resolve_checkpoint

            o = self.options
            path = resolve_checkpoint(o.model, o.revision)
            with reporter.status(f"loading {o.model} ..."):
                from ..model import runtime_for
                from ..model.loading import load_model

                self._runtime = runtime_for(load_model(path, o.model, o.device, o.dtype, needs, preferred, o.threads))
                self._runtime.fast_decode = o.fast_decode
            # The millions of objects torch and transformers made live as long as the process: out of the
            # collector's sight, so walking a 100,000-file folder does not pay for scanning them again and again.
            gc.freeze()
        else:
            from ..model.loading import require_heads

            require_heads(self._runtime.loaded.heads, needs, self.options.model, preferred)
        return self._runtime, self.options.batch_size or self._runtime.default_batch_size

    def run(self, request, outcome: Outcome, reporter: Reporter):
        """The request's operation on this process's model (its images found here first)."""
        preflight(request, self.options, loaded=self._runtime is not None)
        request = located(request, outcome, reporter)
        if isinstance(request, Refresh) and request.engine == "ray":
            return self._refresh_on_ray(request, outcome, reporter)
        operation = operation_of(request)
        if not operation.uses_model(request):
            return operation.run(None, request, outcome, reporter, 0)
        runtime, batch = self.runtime(reporter, *operation.heads(request))
        return operation.run(runtime, request, outcome, reporter, batch)

    def _refresh_on_ray(self, request: Refresh, outcome: Outcome, reporter: Reporter) -> RefreshStats:
        """Bring the index up to date on Ray: the model runs in Ray's actors, this process only writes the index."""
        from ..engines.ray import RayEngine
        from ..index.store import EmbeddingIndex
        from ..model.hub import embedding_identity, resolve_checkpoint
        from ..model.loading import select_precision
        from ..tasks import indexing

        o, r = self.options, request
        checkpoint = resolve_checkpoint(o.model, o.revision)
        ray = RayEngine.for_checkpoint(checkpoint, o.model, o.device, o.dtype, r.ray_address, o.fast_decode)
        identity, label = embedding_identity(checkpoint, o.model, select_precision(o.dtype)[0])
        opened = EmbeddingIndex.for_writing(r.path, identity, ray.dim, r.rebuild, label, wait_s=r.wait_s)
        batch = o.batch_size or 8
        return indexing.index_images(None, opened, r.files, outcome, r.folders, batch, reporter, engine=ray)

    def in_process(self) -> Local:
        return self
