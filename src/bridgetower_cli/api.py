"""bt from Python: ``bt.load(...)`` gives a ``Model`` whose methods return the CLI's records (dataclasses whose
``to_dict()`` is the CLI's JSON), in this process or on a bt server (``server=``)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

from .backend import Backend, ImageQuery, ModelOptions, open_backend
from .errors import BtError
from .model.catalog import DEFAULT_CONTRASTIVE_MODEL
from .records import (
    EmbeddingRecord,
    ExplainRecord,
    FillMaskRecord,
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

    @property
    def name(self) -> str:
        return self._backend.options.model

    def __repr__(self) -> str:
        return f"Model({self.name!r})"

    def _outcome(self) -> Outcome:
        outcome = Outcome()
        self.skipped = outcome.skipped
        return outcome

    def score(self, images: Images, texts: Iterable[str], top_k: int | None = None) -> list[ScoreRecord]:
        """ITM match (logit, probability) of every image x text pair; per image, the best first."""
        sources, texts = _sources(images), _texts(texts)
        return list(self._backend.score(sources, texts, self._outcome(), Reporter(), top_k))

    def fill_mask(
        self, images: Images, texts: Iterable[str], top_k: int = 5, targets: Iterable[str] | None = None
    ) -> list[FillMaskRecord]:
        """The ``<mask>`` words of each text given each image: candidates per mask, and the filled text."""
        sources, texts = _sources(images), _texts(texts)
        words = list(targets) if targets is not None else None
        return list(self._backend.fill_mask(sources, texts, self._outcome(), Reporter(), top_k, words))

    def embed(self, images: Images = (), texts: Iterable[str] = (), kind: str | None = None) -> list[EmbeddingRecord]:
        """L2-normalised ITC embeddings: of the images, of the texts, or (``kind="cross"``) of each pair."""
        sources, texts = _sources(images) if images else [], _texts(texts) if texts else []
        kinds = [kind] if kind else [k for k, given in (("image", sources), ("text", texts)) if given]
        if not kinds:
            raise BtError("nothing to embed", "pass images, texts, or both with kind='cross'")
        return list(self._backend.embed(kinds, sources, texts, self._outcome(), Reporter()))

    def retrieve(
        self,
        query,
        images: Iterable[str | os.PathLike] = (),
        index: str | os.PathLike | None = None,
        top_k: int = 10,
        rerank_k: int = 5,
        refresh: bool = True,
    ) -> list[RetrievalRecord]:
        """Images for a text (or like an image: a path, a ``PIL.Image`` or bytes) among ``images`` (paths, folders,
        globs), over the index ``index`` (refreshed first unless ``refresh`` is off; then, with no ``images``, the
        whole index is searched): the ITC shortlist reranked by the ITM head, as ``bt retrieve``."""
        specs = [str(spec) for spec in images]
        if not isinstance(query, str) or Path(query).is_file():
            (query,) = _sources([query])
        request = ImageQuery(query, specs, Path(index) if index else None, False, refresh, top_k, rerank_k)
        return self._backend.retrieve_images(request, self._outcome(), Reporter())

    def rank_texts(self, image, texts: Iterable[str], top_k: int = 10, rerank_k: int = 5) -> list[RetrievalRecord]:
        """Texts for an image, as ``bt retrieve --image``."""
        (source,) = _sources([image])
        return self._backend.retrieve_texts(source, _texts(texts), self._outcome(), Reporter(), top_k, rerank_k)

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
        from .tasks.labels import METHODS, check_labels, read_templates

        if method not in METHODS:
            raise BtError(f"no method {method!r}", f"one of: {', '.join(METHODS)}")
        names = check_labels([str(label) for label in labels])
        chosen = read_templates(list(templates) if templates is not None else None, None)
        sources, outcome = _sources(images), self._outcome()
        return list(self._backend.classify(sources, names, chosen, outcome, Reporter(), method, top_k, rerank_k))

    def explain(self, images: Images, texts: Iterable[str], layer: int | None = None) -> list[ExplainRecord]:
        """Grad-CAM maps of where each image matches each text (the ITM match), as ``bt explain -f json``."""
        sources, texts = _sources(images), _texts(texts)
        return [record for record, _ in self._backend.explain(sources, texts, self._outcome(), Reporter(), layer)]


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
    return Model(open_backend(options, server, api_key, timeout, warn))


def _texts(texts: Iterable[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    return list(dict.fromkeys(texts))


def _sources(images: Images) -> list[ImageSource]:
    """Paths, PIL images and bytes as sources; a path may stand for many images (a folder, a glob)."""
    if isinstance(images, (str, os.PathLike, bytes)) or hasattr(images, "save"):
        images = [images]
    sources = []
    for k, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            sources += expand_image_sources([str(image)])
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
