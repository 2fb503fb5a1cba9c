"""HTTP only, for the web gallery: the static page and the `--browse RUN_DIR` API it reads."""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from capmill.serve.httperrors import HTTPProblem
from capmill.serve.protocol import ErrorResponse

router = APIRouter()
_STATIC = {"gallery.js": "text/javascript", "gallery.css": "text/css", "favicon.svg": "image/svg+xml"}
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404)}


class EditRequest(BaseModel):
    caption: str = Field(..., max_length=100_000)


class GalleryInfo(BaseModel):
    model: str | None
    profile: str | None
    modes: list[str]
    default_mode: str | None
    browse: str | None
    max_image_bytes: int


def _browse(request: Request):  # noqa: ANN202
    browse = request.app.state.browse
    if browse is None:
        raise HTTPProblem(404, "no run folder to browse: start the server with --browse RUN_DIR", code="no_browse")
    return browse


def _asset(name: str) -> bytes:
    return resources.files("capmill.serve.gallery").joinpath(name).read_bytes()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(_asset("index.html"))


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    if name not in _STATIC:
        raise HTTPProblem(404, f"no static file {name!r}")
    return Response(_asset(name), media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})


@router.get("/gallery/info", response_model=GalleryInfo, tags=["gallery"], responses=_ERRORS)
async def info(request: Request) -> GalleryInfo:
    service, browse = request.app.state.service, request.app.state.browse
    return GalleryInfo(
        model=service.names[0] if service else None,
        profile=service.profile.name if service else None,
        modes=list(service.profile.modes) if service else [],
        default_mode=service.profile.default_mode if service else None,
        browse=str(browse.run_dir) if browse else None,
        max_image_bytes=request.app.state.config.max_image_bytes,
    )


@router.get("/browse/records", tags=["gallery"], responses=_ERRORS)
async def records(
    request: Request,
    status: str | None = Query(None, max_length=32),
    q: str | None = Query(None, max_length=500),
    offset: int = Query(0, ge=0),
    limit: int = Query(60, ge=1, le=500),
) -> dict[str, Any]:
    browse = _browse(request)
    return await asyncio.to_thread(browse.query, status, q, offset, limit)


@router.get("/browse/thumb/{record_id:path}", tags=["gallery"], responses=_ERRORS)
async def thumbnail(record_id: str, request: Request) -> Response:
    browse = _browse(request)
    data = await asyncio.to_thread(browse.thumbnail, record_id)
    if data is None:
        raise HTTPProblem(404, f"no preview for {record_id!r}")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=300"})


@router.get("/browse/image/{record_id:path}", tags=["gallery"], responses=_ERRORS)
async def image(record_id: str, request: Request) -> Response:
    browse = _browse(request)
    path = await asyncio.to_thread(browse.image_path, record_id)
    if path is None:
        raise HTTPProblem(404, f"no local image for {record_id!r}")
    return FileResponse(path)


@router.post("/browse/edits/{record_id:path}", tags=["gallery"], responses=_ERRORS)
async def save_edit(record_id: str, body: EditRequest, request: Request) -> dict[str, Any]:
    browse = _browse(request)
    try:
        return await asyncio.to_thread(browse.save_edit, record_id, body.caption)
    except KeyError:
        raise HTTPProblem(404, f"no record {record_id!r} in {browse.run_dir}") from None


@router.get("/browse/export", tags=["gallery"], responses=_ERRORS)
async def export(
    request: Request,
    status: str | None = Query(None, max_length=32),
    q: str | None = Query(None, max_length=500),
) -> StreamingResponse:
    browse = _browse(request)
    name = f"{browse.run_dir.name or 'run'}-export.jsonl"
    return StreamingResponse(  # a sync iterator: Starlette reads it on a worker thread, a chunk at a time
        browse.export(status, q),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
