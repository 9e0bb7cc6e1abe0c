"""Request and response shapes, every field documented (the OpenAPI schema at /openapi.json)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from ..model.catalog import DEFAULT_CONTRASTIVE_MODEL, DEFAULT_MATCHING_MODEL

OWN_FILES = "On a server of your own (bt serve --uds): the image files, as the client found them."
OWN_FOLDERS = "On a server of your own: the folders they were found in (a search's scope)."
MODEL = "A model this server serves: one given to bt serve -m, or (unless --no-pull) a public checkpoint id."


class ModelRequest(BaseModel):
    model_name: str | None = Field(
        None, description="On a server of your own: how the client named the model (`model` is the folder it resolved)."
    )


class ImageIn(BaseModel):
    name: str = Field(description="How records refer to the image (the client's path or URL); unique per request.")
    data: str | None = Field(None, description="The file's bytes, base64-encoded (or a data:image/...;base64, URL).")
    path: str | None = Field(
        None, description="Instead of data: a server path (under --allow-path; anywhere on --uds)."
    )
    url: str | None = Field(None, description="Instead of data, on a server of your own (bt serve --uds): its URL.")

    @model_validator(mode="after")
    def one_source(self):
        if sum(value is not None for value in (self.data, self.path, self.url)) != 1:
            raise ValueError("an image has exactly one of data, path and url")
        return self


class ScoreIn(ModelRequest):
    model: str = Field(DEFAULT_MATCHING_MODEL, description=MODEL)
    images: list[ImageIn] = Field(description="Images, in order.")
    texts: list[str] = Field(description="Texts to score against every image.")
    top_k: int | None = Field(None, description="Keep the best k texts per image.")


class FillMaskIn(ModelRequest):
    model: str = Field(DEFAULT_MATCHING_MODEL, description=MODEL)
    images: list[ImageIn] = Field(description="Images, in order.")
    texts: list[str] = Field(description="Texts with <mask> tokens.")
    top_k: int = Field(5, description="Candidates per mask.")
    targets: list[str] | None = Field(None, description="Restrict the candidates to these words.")


class EmbedIn(ModelRequest):
    model: str = Field(DEFAULT_CONTRASTIVE_MODEL, description=MODEL)
    kind: str = Field(description="image, text, or cross ((image, text) pairs).")
    images: list[ImageIn] = Field(default_factory=list, description="Images (kind image or cross).")
    texts: list[str] = Field(default_factory=list, description="Texts (kind text or cross).")


class RetrieveIn(ModelRequest):
    model: str = Field(DEFAULT_CONTRASTIVE_MODEL, description=MODEL)
    query: str | None = Field(None, description="A text query: rank the images under `sources`.")
    sources: list[str] = Field(default_factory=list, description="Server paths and globs (under --allow-path).")
    index: str | None = Field(
        None, description="The name of one of the server's indexes (letters, digits, . _ -); default 'default'."
    )
    rebuild: bool = Field(False, description="Start the named index afresh (needs `index`).")
    refresh: bool = Field(True, description="Refresh the index for the sources first (false: query it as it is).")
    image: ImageIn | None = Field(None, description="An image query: rank `texts` for it.")
    texts: list[str] = Field(default_factory=list, description="With `image`: the texts to rank.")
    like: ImageIn | None = Field(None, description="An image query: rank the images by their likeness to it.")
    files: list[ImageIn] = Field(default_factory=list, description=OWN_FILES)
    folders: list[str] = Field(default_factory=list, description=OWN_FOLDERS)
    top_k: int = Field(10, description="How many hits.")
    rerank_k: int = Field(5, description="ITM rescoring of the best ITC hits (0: ITC alone).")
    wait_s: float = Field(60.0, description="How long to wait for another writer of the index.")
    exact: bool = Field(False, description="Search every row exactly, past a large index's approximate tier.")
    keep: bool = Field(
        False,
        description="Rank up to 10,000 hits once and keep them a while for paging: the answer has the first "
        "`top_k`, and `meta.hits` (for /v1/hits/{id}) and `meta.total`.",
    )


class IndexIn(ModelRequest):
    model: str = Field(DEFAULT_CONTRASTIVE_MODEL, description=MODEL)
    sources: list[str] = Field(default_factory=list, description="Server paths and globs (under --allow-path).")
    files: list[ImageIn] = Field(default_factory=list, description=OWN_FILES)
    folders: list[str] = Field(default_factory=list, description=OWN_FOLDERS)
    index: str | None = Field(None, description="As in /v1/retrieve (a server of your own: the index file's path).")
    rebuild: bool = Field(False, description="Start the named index afresh (needs `index`).")
    tier_from: int | None = Field(
        None, description="Keep an approximate search tier from this many rows on (0: never); kept in the index."
    )
    wait_s: float = Field(60.0, description="How long to wait for another writer of the index.")


class EvalIn(ModelRequest):
    model: str = Field(DEFAULT_CONTRASTIVE_MODEL, description=MODEL)
    images: list[ImageIn] = Field(description="The caption set's images by name and (server) path.")
    texts: list[str] = Field(description="Its captions.")
    text_image: list[int] = Field(description="For each caption, the index of its image in `images`.")
    k_test: int = Field(128, description="ITM reranks each query's k most similar by ITC.")
    itc_only: bool = Field(False, description="ITC similarities alone (no ITM rerank).")


class ClassifyIn(ModelRequest):
    model: str = Field(DEFAULT_CONTRASTIVE_MODEL, description=MODEL)
    images: list[ImageIn] = Field(description="Images, in order.")
    labels: list[str] = Field(description="The labels to choose from.")
    templates: list[str] = Field(default_factory=list, description="Prompt templates with {} (default: CLIP's 7).")
    method: str = Field("auto", description="auto: ITC with ITC heads, else ITM.")
    top_k: int = Field(5, description="Labels per image.")
    rerank_k: int = Field(10, description="rerank: the ITC shortlist scored by ITM.")


class EvalClassificationIn(ModelRequest):
    model: str = Field(DEFAULT_CONTRASTIVE_MODEL, description=MODEL)
    images: list[ImageIn] = Field(description="The images by name and (server) path.")
    targets: list[int] = Field(description="Each image's class (an index into `classes`).")
    classes: list[str] = Field(description="The class labels.")
    templates: list[str] = Field(default_factory=list, description="Prompt templates with {} (default: CLIP's 7).")
    method: str = Field("auto", description="auto: ITC with ITC heads, else ITM.")
    rerank_k: int = Field(10, description="rerank: the ITC shortlist scored by ITM.")


class ExplainIn(ModelRequest):
    model: str = Field(DEFAULT_MATCHING_MODEL, description=MODEL)
    images: list[ImageIn] = Field(description="Images, in order.")
    texts: list[str] = Field(description="Texts to explain in every image.")
    layer: int | None = Field(
        None, description="The fusion layer whose cross-attention is explained (default: middle)."
    )
    pictures: bool = Field(
        False, description="Also draw each map over its photo, at most 1280 pixels: `picture`, a data:image/png URL."
    )
    words: bool = Field(False, description="With pictures: each token's map too, small (the token's `picture`).")


class EmbeddingsIn(BaseModel):
    """OpenAI / infinity embeddings request."""

    model: str = Field(DEFAULT_CONTRASTIVE_MODEL, description=MODEL)
    input: str | list[str] = Field(description="Texts, or images as data:image/...;base64, URLs.")
    modality: Literal["text", "image"] = Field("text", description="What `input` holds.")
    encoding_format: Literal["float"] = Field("float", description="Only float lists.")


class RerankIn(BaseModel):
    """Cohere / TEI rerank request: a text query and image documents (data URLs), or an image query and texts."""

    model: str = Field(DEFAULT_MATCHING_MODEL, description=MODEL)
    query: str = Field(description="A text, or an image as a data:image/...;base64, URL.")
    documents: list[str] = Field(min_length=1, description="Images (data URLs) for a text query, texts for an image.")
    top_n: int | None = Field(None, ge=1, description="Keep the best n (default: all).")


class Message(BaseModel):
    level: Literal["warning", "info"] = Field(description="How the CLI shows it.")
    message: str = Field(description="The message.")
    kind: str | None = Field(None, description="Warnings that may repeat share a kind (the CLI summarises them).")


class SkippedOut(BaseModel):
    name: str = Field(description="The input left out.")
    reason: str = Field(description="Why.")


class RecordsOut(BaseModel):
    """bt's own answer: the CLI's records, the inputs skipped, and the messages the CLI shows on stderr."""

    records: list[dict] = Field(description="The records, as the CLI prints them with -f json.")
    skipped: list[SkippedOut] = Field(description="Inputs left out, with why.")
    messages: list[Message] = Field(description="Warnings and notes.")


class ErrorOut(BaseModel):
    error: str = Field(description="What went wrong, in one line.")
    hint: str | None = Field(None, description="What to do about it.")
