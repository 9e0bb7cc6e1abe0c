"""The search page: ``/`` and its assets (shipped in the package: no CDN, no external font), the library it searches
(``/v1/library``: each ``--allow-path`` root and its index), and thumbnails (``/v1/thumbnail``) of files under the
roots only, cached on disk beside the indexes, with ``ETag`` and ``Cache-Control``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import re
from importlib import resources
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from ..errors import BtError, InputError, NotFound
from .dispatch import Dispatcher
from .hits import owner_of

ASSETS = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
THUMBNAIL_SIDES = (256, 1600)  # the grid's, and the large view's (never larger than the photo)
MAX_PAGE = 200  # the most records one page of kept hits holds
THUMBNAIL_PIXELS = 64_000_000  # a larger photo gets no thumbnail (the decode budget guards the server anyway)


class BrowseIn(BaseModel):
    root: str = Field(description="One of the folders /v1/library lists.")
    order: Literal["date", "folder"] = Field("date", description="Newest first, or by folder and name.")
    top_k: int = Field(24, ge=1, le=MAX_PAGE, description="How many records the first answer holds.")


def root_index(root: str) -> str:
    """The name of a root's index in the server's index folder: its folder name and a hash of its real path."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", os.path.basename(root.rstrip(os.sep)) or "root").strip("-") or "root"
    return f"{slug[:40]}-{hashlib.sha256(root.encode()).hexdigest()[:8]}"


def _asset(name: str) -> bytes:
    return resources.files("bridgetower_cli.server").joinpath("static", name).read_bytes()


def router(dispatch: Dispatcher) -> APIRouter:
    routes = APIRouter()
    settings, policy = dispatch.settings, dispatch.policy

    @routes.get("/", include_in_schema=False)
    async def page() -> Response:
        """The search page (it asks for the API key, if the server has one, and keeps it for the session)."""
        return Response(_asset("index.html"), media_type="text/html; charset=utf-8", headers=_cached(0))

    @routes.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise NotFound(f"no such asset: {name}")
        return Response(_asset(name), media_type=f"{ASSETS[name]}; charset=utf-8", headers=_cached(0))

    @routes.get("/v1/library")
    async def library() -> dict:
        """The folders the page searches (the server's --allow-path roots), each with its index's state, and the
        model the page uses."""
        from ..model.catalog import DEFAULT_CONTRASTIVE_MODEL

        folders = [await asyncio.to_thread(_folder, policy, root) for root in policy.roots] if not policy.own else []
        model = settings.models[0] if settings.models else DEFAULT_CONTRASTIVE_MODEL
        return {"folders": folders, "model": model, "keyed": settings.api_key is not None}

    @routes.get("/v1/hits/{name}")
    async def hits(name: str, request: Request, offset: int = 0, limit: int = 24) -> dict:
        """Records ``offset`` to ``offset + limit`` of hits kept by a search (``keep``) or a browse: a slice of its
        one ranking, nothing computed again."""
        if offset < 0 or not 0 < limit <= MAX_PAGE:
            raise InputError(f"offset must be 0 or more and limit 1 to {MAX_PAGE}")
        records, total = dispatch.hits.page(owner_of(request.headers.get("authorization")), name, offset, limit)
        return {"records": records, "total": total}

    @routes.post("/v1/browse")
    async def browse(body: BrowseIn, request: Request) -> dict:
        """A folder's indexed photos with no query, newest first (``date``) or by folder and name (``folder``):
        the first ``top_k`` and the id of them all (the first 10,000, as a search keeps) for /v1/hits."""
        if body.root not in policy.roots or policy.own:
            raise InputError("browse one of the folders the page lists", "see /v1/library")
        listing = await asyncio.to_thread(_listing, policy, body.root, body.order)
        name, total = dispatch.hits.keep(owner_of(request.headers.get("authorization")), listing)
        return {"records": listing[: body.top_k], "meta": {"hits": name, "total": total}}

    @routes.get("/v1/thumbnail")
    async def thumbnail(path: str, request: Request, side: int = 256) -> Response:
        """A JPEG of the image at ``path`` (under the roots), at most ``side`` pixels wide or high (256 or 1600)."""
        if side not in THUMBNAIL_SIDES:
            raise InputError(f"side must be one of {', '.join(map(str, THUMBNAIL_SIDES))}")
        real = policy.check(path, "image")
        tag, picture = await asyncio.to_thread(_thumbnail, policy.owned, real, side, dispatch.reading)
        headers = {"ETag": f'"{tag}"', **_cached(86400)}
        if request.headers.get("if-none-match") == f'"{tag}"':
            return Response(status_code=304, headers=headers)
        return Response(picture, media_type="image/jpeg", headers=headers)

    return routes


def _cached(seconds: int) -> dict:
    """Private (a key may guard it): a page revalidated each time, thumbnails kept a day (their ETag changes with
    the file)."""
    return {"Cache-Control": f"private, max-age={seconds}" if seconds else "no-cache"}


def _folder(policy, root: str) -> dict:
    """A root, its index's name and state (images, last refresh; none yet: 0 and null), and with no index yet the
    photos a build would index (counted up to ``PHOTOS_COUNTED``)."""
    from ..index.store import EmbeddingIndex

    name = root_index(root)
    path = policy.index(name, False)
    images, last = 0, None
    if path.exists():
        try:
            with EmbeddingIndex.for_reading(path, check=False) as index:
                stats = index.stats()
                images, last = stats.images, stats.last_refresh
        except BtError:
            pass  # (a damaged or foreign file: the page offers a refresh, which says what is wrong)
    photos = images or _photos_under(root)
    return {"root": root, "index": name, "images": images, "photos": photos, "last_refresh": last}


PHOTOS_COUNTED = 100_000


def _photos_under(root: str) -> int:
    """How many image files a walk of ``root`` finds, up to ``PHOTOS_COUNTED`` (a count, not a promise)."""
    from itertools import islice

    from ..sources import is_image_name
    from ..walker import folder_files

    found = (name for name, *_ in folder_files(root, root) if is_image_name(name))
    return sum(1 for _ in islice(found, PHOTOS_COUNTED))


def make_thumbnails(dispatch: Dispatcher, sources, reporter) -> None:
    """The grid's thumbnails of ``sources`` (a refresh's files), made now so that a first view finds them: one
    that cannot be made is left to the view (which says why)."""
    with reporter.progress(len(sources), "making thumbnails") as advance:
        for source in sources:
            with contextlib.suppress(BtError):
                _thumbnail(dispatch.policy.owned, source.path, THUMBNAIL_SIDES[0], dispatch.reading)
            advance(1)


def _listing(policy, root: str, order: str) -> list[dict]:
    """A root's indexed photos as browse records: image (as a search names it), folder, taken (EXIF, seconds, the
    camera's clock; None: unknown) and modified (seconds); by date: when taken, else when modified, newest first."""
    from ..index.store import EmbeddingIndex

    path = policy.index(root_index(root), False)
    if not path.exists():
        return []
    with EmbeddingIndex.for_reading(path, check=False) as index:
        rows = index.listing([Path(root)])
    if order == "date":
        rows.sort(key=lambda row: (-(row[2] if row[2] is not None else row[1] // 10**9), row[0]))  # (ties: by path)
    return [
        {"rank": rank, "image": image, "folder": os.path.dirname(image), "taken": taken, "modified": mtime_ns // 10**9}
        for rank, (image, mtime_ns, taken) in enumerate(rows, start=1)
    ]


def _thumbnail(owned, real: str, side: int, reading) -> tuple[str, bytes]:
    """(its ETag, the JPEG): cached in the server's own folder (``thumbnails/SIDE/``, reached through verified
    descriptors), keyed by the file's real path, size and modification time, and the side, so an edited photo gets
    a new one; written to a new file and renamed (no half-written thumbnail, no link followed)."""
    from PIL import Image

    from ..images import decode_image, decoded_pixels, decoding
    from ..reading import read_file, restricted

    try:
        found = os.stat(real)
    except FileNotFoundError:
        raise NotFound(f"no image at {real}", "check the path") from None
    except OSError as error:
        raise InputError(f"cannot read {real}: {(error.strerror or str(error)).lower()}") from None
    tag = hashlib.sha256(f"{real}\0{found.st_size}\0{found.st_mtime_ns}\0{side}".encode()).hexdigest()[:32]
    with owned.opened("thumbnails", str(side)) as folder:
        cached = owned.read(folder, f"{tag}.jpg")
        if cached is not None:
            return tag, cached
        with restricted(reading):  # (the file actually opened is checked against the roots too)
            data = read_file(real)
        with decoding(data):
            if decoded_pixels(data) > THUMBNAIL_PIXELS:
                raise InputError(f"{real} is too large for a thumbnail")
            image = decode_image(data, short_side=side)  # (a JPEG read at the reduced scale the side allows)
            image.thumbnail((side, side), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=85)
        owned.write(folder, f"{tag}.jpg", buffer.getvalue())
    return tag, buffer.getvalue()
