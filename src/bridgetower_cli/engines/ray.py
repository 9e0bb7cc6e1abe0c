"""``--engine ray``: image embedding on Ray Data, past one process and one machine.

The pipeline: the file list -> CPU tasks that read, hash and preprocess each image exactly as the local engine does
(EXIF, modes, elongated images padded, unreadable files kept with their reason) -> a pool of model actors (one per
GPU when the cluster has GPUs, else CPU actors) running bt's own runtime -> batches streamed back to the driver,
decoding and the model overlapping. Ray retries a task or restarts an actor that dies. The driver is the only writer:
``bt index`` stores each batch through the index's transactional path; ``bt embed --output DIR`` writes Parquet
shards, each complete or absent. Install with ``pip install "bridgetower-cli[ray]"``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BtError, InputError
from ..images import decode_image, fit_aspect
from ..reading import read_bytes
from ..sources import ImageSource

RAY_INSTALL = 'pip install "bridgetower-cli[ray]"'
SHARD = 1024  # images per Parquet shard of `bt embed --engine ray --output DIR`


def require_ray() -> None:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise BtError("--engine ray needs Ray Data, which is not installed", RAY_INSTALL) from None


@dataclass
class Embedded:
    """One image out of the pipeline: its embedding, or why it could not be read."""

    name: str
    path: str
    hash: str
    embedding: np.ndarray | None
    error: str
    padded: str  # "taller", "wider" or "" (see images.fit_aspect)


_PROCESSORS: dict[str, object] = {}


def _processor(checkpoint: str):
    """The checkpoint's image processor, loaded once per worker process (no model weights)."""
    if checkpoint not in _PROCESSORS:
        from ..model.loading import load_processor, read_config

        path = Path(checkpoint)
        _PROCESSORS[checkpoint] = load_processor(path, read_config(path, checkpoint)).image_processor
    return _PROCESSORS[checkpoint]


def read_batch(batch: dict, checkpoint: str, image_size: int, short_side: int | None = None) -> dict:
    """The CPU stage: read, hash and preprocess a batch of files as the local engine does (``short_side``: fast
    decoding, see ``images.decode_image``)."""
    from ..index.files import bytes_hash
    from ..model.runtime import pixel_values

    processor = _processor(checkpoint)
    empty = np.zeros((3, image_size, image_size), dtype=np.float32)
    out: dict[str, list] = {"name": [], "path": [], "hash": [], "pixels": [], "error": [], "padded": []}
    for name, path in zip(batch["name"], batch["path"]):
        source, digest, pixels, error, padded = ImageSource(str(name), path=str(path)), "", empty, "", ""
        try:
            data = read_bytes(source)
            digest = bytes_hash(data)
            image, padded = fit_aspect(decode_image(data, short_side=short_side), image_size)
            pixels = pixel_values(processor, image).numpy()
        except InputError as failure:
            error = failure.message
        for key, value in (
            ("name", str(name)),
            ("path", str(path)),
            ("hash", digest),
            ("pixels", pixels),
            ("error", error),
            ("padded", padded),
        ):
            out[key].append(value)
    return {key: np.stack(values) if key == "pixels" else np.array(values) for key, values in out.items()}


class EmbedActor:
    """The model stage: one runtime per actor, loaded once."""

    def __init__(self, checkpoint: str, name: str, device: str, dtype: str):
        from ..model import runtime_for
        from ..model.loading import load_model

        # Ray gives a 1-CPU actor one thread (OMP_NUM_THREADS=1); the CPU actor is the node's one model worker: let
        # it use the node's cores, as the local engine does (decoding tasks interleave with it).
        threads = None if device not in ("auto", "cpu") else os.cpu_count()
        self.runtime = runtime_for(load_model(Path(checkpoint), name, device, dtype, needs=("itc",), threads=threads))
        self.dim = self.runtime.network.config.contrastive_hidden_size

    def __call__(self, batch: dict) -> dict:
        import torch

        ok = batch["error"] == ""
        embeddings = np.zeros((len(ok), self.dim), dtype=np.float32)
        if ok.any():
            states = self.runtime.encode_images(torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])))
            embeddings[ok] = np.stack([state.itc_embedding.float().cpu().numpy() for state in states])
        return {key: batch[key] for key in ("name", "path", "hash", "error", "padded")} | {"embedding": embeddings}


@contextlib.contextmanager
def _stderr_shut():
    """File descriptor 2 pointed at /dev/null for a while (what C++ code writes there, Python cannot filter)."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def start(address: str | None) -> None:
    """Join the cluster ``address`` (or ``RAY_ADDRESS``), or start a local Ray."""
    import atexit
    import logging
    import warnings

    import ray

    # Ray's own progress and log lines would fill the terminal: bt reports progress itself, on stderr. Its core
    # logs only fatal errors; the line in which it announces that level is said while starting, with stderr shut.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    warnings.filterwarnings("ignore", module="ray")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        try:
            with _stderr_shut():
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise BtError(
                f"cannot join the Ray cluster at {address}: {error}", "start one with `ray start --head`"
            ) from None
        atexit.register(ray.shutdown)  # no ray:: worker outlives the run (a cluster joined stays up)
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def embed_images(
    checkpoint: Path,
    name: str,
    sources: Sequence[ImageSource],
    image_size: int,
    batch_size: int,
    device: str = "auto",
    dtype: str = "auto",
    address: str | None = None,
    fast_decode: bool = False,
) -> Iterator[list[Embedded]]:
    """Embed local image files on Ray Data; yields batches as they complete (in no particular order)."""
    import ray

    require_ray()
    start(address)
    gpus = int(ray.cluster_resources().get("GPU", 0)) if device in ("auto", "cuda") else 0
    items = [{"name": s.name, "path": s.path} for s in sources]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 64)))
    dataset = dataset.map_batches(
        read_batch,
        batch_size=batch_size,
        fn_kwargs={
            "checkpoint": str(checkpoint),
            "image_size": image_size,
            "short_side": image_size if fast_decode else None,
        },
        num_cpus=0.5,  # unlike the model actors: Ray keeps the stages apart, so decoding overlaps the model
    )

    class Actor(EmbedActor):  # the settings in the class, not as constructor arguments in the object store
        def __init__(self):
            super().__init__(str(checkpoint), name, device, dtype)

    dataset = dataset.map_batches(
        Actor,
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=max(1, gpus)),  # Ray Data restarts an actor that dies
        num_gpus=1 if gpus else 0,
        num_cpus=0 if gpus else 1,
    )
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        yield [
            Embedded(str(n), str(p), str(h), e if not err else None, str(err), str(pad))
            for n, p, h, e, err, pad in zip(
                batch["name"], batch["path"], batch["hash"], batch["embedding"], batch["error"], batch["padded"]
            )
        ]


@dataclass
class RayEngine:
    """Where and how the Ray pipeline runs a checkpoint."""

    checkpoint: Path
    name: str
    image_size: int
    dim: int
    device: str = "auto"
    dtype: str = "auto"
    address: str | None = None
    fast_decode: bool = False

    @classmethod
    def for_checkpoint(
        cls, checkpoint: Path, name: str, device: str, dtype: str, address: str | None, fast_decode: bool = False
    ) -> RayEngine:
        """Check the checkpoint (ITC heads) and read what the driver needs, without loading the weights here."""
        from ..model.loading import heads_in, load_processor, read_config, require_heads

        require_ray()
        config = read_config(checkpoint, name)
        require_heads(heads_in(checkpoint, config), ("itc",), name)
        size = load_processor(checkpoint, config).image_processor.size["shortest_edge"]
        return cls(checkpoint, name, size, config.contrastive_hidden_size, device, dtype, address, fast_decode)

    def embed(self, sources: Sequence[ImageSource], batch_size: int) -> Iterator[list[Embedded]]:
        return embed_images(
            self.checkpoint,
            self.name,
            sources,
            self.image_size,
            batch_size,
            self.device,
            self.dtype,
            self.address,
            self.fast_decode,
        )


def shard_paths(output: Path, count: int) -> list[Path]:
    return [output / f"part-{k:05d}.parquet" for k in range(-(-count // SHARD))]


class Shards:
    """``bt embed --engine ray --output DIR``: the images in input order, cut into shards of ``SHARD``; a shard is
    written (whole, or not at all) once its last image is embedded, in whatever order Ray returns them; shards
    already complete are not embedded again."""

    def __init__(self, output: Path | None, sources: Sequence[ImageSource], model: str):
        self.output, self.model = output, model
        self.position = {source.path: k for k, source in enumerate(sources)}
        self.paths = shard_paths(output, len(sources)) if output is not None else []
        if output is not None:
            output.mkdir(parents=True, exist_ok=True)
        self.todo = [s for k, s in enumerate(sources) if output is None or not self.paths[k // SHARD].exists()]
        self.pending: dict[int, list] = {}
        self.remaining: dict[int, int] = {}
        for source in self.todo:
            shard = self.position[source.path] // SHARD
            self.remaining[shard] = self.remaining.get(shard, 0) + 1

    def done(self, item: Embedded) -> None:
        """One image out of the pipeline (embedded or not): its shard is written when it was the last one."""
        if self.output is None:
            return
        shard = self.position[item.path] // SHARD
        if not item.error:
            self.pending.setdefault(shard, []).append((self.position[item.path], item))
        self.remaining[shard] -= 1
        if self.remaining[shard] == 0:
            rows = sorted(self.pending.pop(shard, []), key=lambda row: row[0])
            write_shard(self.paths[shard], [(i.name, "image", self.model, i.embedding) for _, i in rows])


def write_shard(path: Path, rows: list[tuple[str, str, str, np.ndarray]]) -> None:
    """One Parquet shard (id, kind, model, embedding), written to a temporary name and renamed: complete or absent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": [r[0] for r in rows],
            "kind": [r[1] for r in rows],
            "model": [r[2] for r in rows],
            "embedding": pa.array([r[3].astype(np.float32) for r in rows], type=pa.list_(pa.float32())),
        }
    )
    partial = path.with_name(f".{path.name}.partial")
    pq.write_table(table, partial)
    os.replace(partial, path)
