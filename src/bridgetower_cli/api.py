"""bt from Python: ``bt.load(...)`` gives a ``Model`` whose methods return the CLI's records (dataclasses whose
``to_dict()`` is the CLI's JSON), in this process or on a bt server (``server=``)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

from .backend import Backend, ModelOptions, open_backend
from .errors import BtError, UsageError
from .model.catalog import DEFAULT_CONTRASTIVE_MODEL
from .operations import CheckIndex, Classify, Embed, Explain, FillMask, RankTexts, Score, Search, operation_of
from .records import (
    EmbeddingRecord,
    ExplainRecord,
    FillMaskRecord,
    IndexCheck,
    LabelRecord,
    Outcome,
    Reporter,
    RetrievalRecord,
    ScoreRecord,
    Skipped,
)
from .sources import ImageSource, expand_image_sources

Images = Iterable  # of paths (files, folders, globs, URLs), PIL images, or bytes


class Model:
    """A BridgeTower checkpoint, loaded on first use. Images are paths (a folder or a glob stands for its images),
    ``PIL.Image.Image`` objects or the bytes of an image file; an image that cannot be read is left out, and the
    inputs left out by the last call are in ``skipped``."""

    def __init__(self, backend: Backend):
        self._backend = backend
        self.skipped: list[Skipped] = []
        self._left_out: list[tuple[str, str]] = []

    @property
    def name(self) -> str:
        return self._backend.options.model

    def __repr__(self) -> str:
        return f"Model({self.name!r})"

    def _outcome(self) -> Outcome:
        outcome = Outcome()
        self.skipped = outcome.skipped
        return outcome

    def run(self, request):
        """Any request of ``bridgetower_cli.operations`` (checked when made): its records, or its one record."""
        outcome, reporter = self._outcome(), Reporter()
        for name, why in self._left_out:  # (what the walks of this call's folders could not use)
            outcome.skip(name, why, reporter)
        self._left_out = []
        result = self._backend.run(request, outcome, reporter)
        return result if operation_of(request).single else list(result)

    def _sources(self, images: Images) -> list[ImageSource]:
        return _sources(images, self._left_out)

    def score(self, images: Images, texts: Iterable[str], top_k: int | None = None) -> list[ScoreRecord]:
        """ITM match (logit, probability) of every image x text pair; per image, the best first."""
        return self.run(Score(self._sources(images), _texts(texts), top_k))

    def fill_mask(
        self, images: Images, texts: Iterable[str], top_k: int = 5, targets: Iterable[str] | None = None
    ) -> list[FillMaskRecord]:
        """The ``<mask>`` words of each text given each image: candidates per mask, and the filled text."""
        words = [str(word) for word in targets] if targets is not None else None
        return self.run(FillMask(self._sources(images), _texts(texts), top_k, words))

    def embed(self, images: Images = (), texts: Iterable[str] = (), kind: str | None = None) -> list[EmbeddingRecord]:
        """L2-normalised ITC embeddings: of the images, of the texts, or (``kind="cross"``) of each pair."""
        sources, texts = self._sources(images) if images else [], _texts(texts) if texts else []
        kinds = [kind] if kind is not None else [k for k, given in (("image", sources), ("text", texts)) if given]
        if not kinds:
            raise UsageError("nothing to embed", "pass images, texts, or both with kind='cross'")
        requests = [Embed(k, sources if k != "text" else [], texts if k != "image" else []) for k in kinds]
        return [record for request in requests for record in self.run(request)]

    def retrieve(
        self,
        query,
        images: Iterable[str | os.PathLike] = (),
        index: str | os.PathLike | None = None,
        top_k: int = 10,
        rerank_k: int = 5,
        refresh: bool = True,
        exact: bool = False,
    ) -> list[RetrievalRecord]:
        """Images for a text (or like an image: a path, a ``PIL.Image`` or bytes) among ``images`` (paths, folders,
        globs), over the index ``index`` (refreshed first unless ``refresh`` is off; then, with no ``images``, the
        whole index is searched): the ITC shortlist reranked by the ITM head, as ``bt retrieve``; ``exact``: every
        row, past a large index's approximate tier."""
        specs = [str(spec) for spec in images]
        if not isinstance(query, str) or Path(query).is_file():
            (query,) = self._sources([query])
        path = Path(index) if index else None
        return self.run(Search(query, specs, path, False, refresh, top_k, rerank_k, exact=exact))

    def rank_texts(self, image, texts: Iterable[str], top_k: int = 10, rerank_k: int = 5) -> list[RetrievalRecord]:
        """Texts for an image, as ``bt retrieve --image``."""
        sources = self._sources([image])
        if len(sources) != 1:
            raise UsageError(f"rank_texts takes one image, not {len(sources)}", "name a single image file")
        return self.run(RankTexts(sources[0], _texts(texts), top_k, rerank_k))

    def classify(
        self,
        images: Images,
        labels: Iterable[str],
        method: str = "auto",
        templates: Iterable[str] | None = None,
        top_k: int = 5,
        rerank_k: int = 10,
    ) -> list[LabelRecord]:
        """Each image's ``top_k`` most probable ``labels``, as ``bt classify``: ``method`` ``"itc"`` (prompt-ensembled
        ITC), ``"itm"``, ``"rerank"`` (ITC shortlist of ``rerank_k``, then ITM) or ``"auto"`` (ITC with ITC heads,
        else ITM); ``templates`` with ``{}`` for the label (default: CLIP's seven)."""
        names = [str(label) for label in labels]
        chosen = list(templates) if templates is not None else []
        return self.run(Classify(self._sources(images), names, chosen, method, top_k, rerank_k))

    def check_index(self, index: str | os.PathLike | None = None, repair: bool = False) -> IndexCheck:
        """Verify every row of an index (default: bt's own) against its checksum, as ``bt index --check``; with
        ``repair``, embed again exactly the damaged rows, as ``--repair``. The record says what it found
        (``sound``, ``damaged_paths``, and ``repair``: what mends it)."""
        return self.run(CheckIndex(Path(index) if index is not None else None, repair, named=index is not None))

    def explain(self, images: Images, texts: Iterable[str], layer: int | None = None) -> list[ExplainRecord]:
        """Grad-CAM maps of where each image matches each text (the ITM match), as ``bt explain -f json``."""
        return self.run(Explain(self._sources(images), _texts(texts), layer))


def load(
    model: str = DEFAULT_CONTRASTIVE_MODEL,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    threads: int | None = None,
    batch_size: int | None = None,
    fast_decode: bool = False,
    server: str | None = None,
    api_key: str | None = None,
    timeout: float | None = None,
) -> Model:
    """A checkpoint by hub id or local directory, run here, or on the bt server at ``server`` (the same records;
    ``"auto"``: the automatic server, started on first use; a ``RuntimeWarning`` if it cannot start, and the work
    runs here)."""
    import warnings

    def warn(message: str) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=4)

    options = ModelOptions(str(model), revision, device, dtype, threads, batch_size, fast_decode)
    if not server:  # (a missing checkpoint said now, fast and without torch; a server resolves its own names)
        from .model.hub import resolve_checkpoint

        resolve_checkpoint(options.model, options.revision)
    return Model(open_backend(options, server, api_key, timeout, warn))


def _texts(texts: Iterable[str]) -> list[str]:
    """The texts, each once (a lone string: one text; anything else is refused by the request, in its words)."""
    if isinstance(texts, str):
        texts = [texts]
    return list(dict.fromkeys(texts)) if isinstance(texts, Iterable) else texts


def _sources(images: Images, left_out: list | None = None) -> list[ImageSource]:
    """Paths, PIL images and bytes as sources; a path may stand for many images (a folder, a glob); what a walk
    could not use goes to ``left_out``."""
    if isinstance(images, (str, os.PathLike, bytes)) or hasattr(images, "save"):
        images = [images]
    sources = []
    for k, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            sources += expand_image_sources([str(image)], left_out=left_out)
        elif isinstance(image, bytes):
            sources.append(ImageSource(f"image[{k}]", data=image))
        elif hasattr(image, "save"):  # a PIL image: its pixels, losslessly
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            name = getattr(image, "filename", "")
            taken = name in {source.name for source in sources}  # (records must tell the images apart)
            sources.append(ImageSource(name if name and not taken else f"image[{k}]", data=buffer.getvalue()))
        else:
            raise BtError(f"image[{k}] is a {type(image).__name__}", "pass paths, PIL images or bytes")
    return sources
