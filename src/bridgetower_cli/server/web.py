"""The search page: ``/`` and its assets (shipped in the package: no CDN, no external font), the library it searches
(``/v1/library``: each ``--allow-path`` root and its index), and thumbnails (``/v1/thumbnail``) of files under the
roots only, cached on disk beside the indexes, with ``ETag`` and ``Cache-Control``."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
from importlib import resources

from fastapi import APIRouter, Request, Response

from ..errors import BtError, InputError, NotFound
from .dispatch import Dispatcher

ASSETS = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
THUMBNAIL_SIDES = (256, 1280)  # the grid's, and the large view's
THUMBNAIL_PIXELS = 64_000_000  # a larger photo gets no thumbnail (the decode budget guards the server anyway)


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

    @routes.get("/v1/thumbnail")
    async def thumbnail(path: str, request: Request, side: int = 256) -> Response:
        """A JPEG of the image at ``path`` (under the roots), at most ``side`` pixels wide or high (256 or 1280)."""
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
    """A root, its index's name and state (images, last refresh; none yet: 0 and null)."""
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
    return {"root": root, "index": name, "images": images, "last_refresh": last}


def _thumbnail(owned, real: str, side: int, reading) -> tuple[str, bytes]:
    """(its ETag, the JPEG): cached in the server's own folder (``thumbnails/SIDE/``, reached through verified
    descriptors), keyed by the file's real path, size and modification time, and the side, so an edited photo gets
    a new one; written to a new file and renamed (no half-written thumbnail, no link followed)."""
    from PIL import Image

    from ..images import decode_image, decoding
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
            image = decode_image(data)
            if image.width * image.height > THUMBNAIL_PIXELS:
                raise InputError(f"{real} is too large for a thumbnail")
            image.thumbnail((side, side), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=85)
        owned.write(folder, f"{tag}.jpg", buffer.getvalue())
    return tag, buffer.getvalue()
