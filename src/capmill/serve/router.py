"""HTTP only: parse, call the service, shape the answer. The logic lives in service.py and browse.py."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import ValidationError

from capmill.errors import InputError
from capmill.serve import limits
from capmill.serve.guards import before_queue
from capmill.serve.httperrors import HTTPProblem, bad_request, error_body, problem_for, validation_message
from capmill.serve.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from capmill.serve.protocol import (
    AssistantMessage,
    CaptionInfo,
    CaptionRecord,
    CaptionRequest,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ChunkInfo,
    Delta,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    Usage,
)
from capmill.serve.service import CaptionService, PreparedChat, Ticket, text_item, upload_item

router = APIRouter()

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 408, 413, 429, 503, 504)}
_CAPTION_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": CaptionRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the image file"},
                        "mode": {"type": "string", "description": "caption | structured | text"},
                        "id": {"type": "string"},
                        "text": {"type": "string", "description": "caption text for text mode, instead of a file"},
                        "constrained": {"type": "string", "enum": ["true", "false"]},
                    },
                }
            },
        },
    }
}


def service_of(request: Request) -> CaptionService:
    service = request.app.state.service
    if service is None:
        raise HTTPProblem(
            404, "no model is loaded: this server only browses a run folder (start it with --model)", code="no_model"
        )
    return service


@router.get("/healthz", response_model=Health, tags=["server"])
async def healthz(request: Request) -> Health:
    service = request.app.state.service
    if service is None:
        return Health(status="browse-only")
    return Health(
        status="ok", model=service.names[0], queue_depth=service.batcher.depth, fast_paths=service.fast_paths()
    )


@router.get("/metrics", response_class=PlainTextResponse, tags=["server"], responses={401: _ERRORS[401]})
async def metrics(request: Request) -> PlainTextResponse:
    service = request.app.state.service
    if service is not None:
        request.app.state.metrics.set_fast_paths(service.fast_paths())
    text = request.app.state.metrics.render()
    return PlainTextResponse(text, media_type=METRICS_CONTENT_TYPE)


@router.get("/v1/models", response_model=ModelList, tags=["openai"], responses={401: _ERRORS[401]})
async def list_models(request: Request) -> ModelList:
    service = request.app.state.service
    if service is None:
        return ModelList(data=[])
    root = service.settings.get("model")
    cards = [
        ModelCard(
            id=name, created=service.created, profile=service.profile.name, root=root, modes=list(service.profile.modes)
        )
        for name in service.names
    ]
    return ModelList(data=cards)


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    tags=["openai"],
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    service = service_of(request)
    async with before_queue(request.scope):
        prepared = await service.prepare_chat(body)
    ticket = service.submit(prepared.request, stream=body.stream)  # a full queue answers 503 here, before a stream
    _queued(request)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _sse(service, prepared, ticket, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    generation = await service.wait(ticket, request.receive)
    if generation.error:
        raise HTTPProblem(502, f"generation failed: {generation.error}", code="generation_failed")
    record = service.read(prepared, generation)
    return ChatCompletion(
        id=prepared.id,
        created=prepared.created,
        model=prepared.model,
        choices=[Choice(message=AssistantMessage(content=generation.text), finish_reason=generation.finish_reason)],
        usage=_usage(generation),
        capmill=_info(record),
    )


def _flag(value: Any, name: str) -> bool | None:
    if value in (None, ""):
        return None
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise bad_request(f"{name}: expected true or false, got {value!r}", name)


def _queued(request: Request) -> None:
    """This request has reached the batcher's queue: it no longer counts as on its way (EarlyArrivals)."""
    arrival = request.scope.get("capmill.arrival")
    if arrival is not None:
        arrival.done()


def _usage(generation) -> Usage:  # noqa: ANN001
    return Usage(
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        total_tokens=generation.prompt_tokens + generation.completion_tokens,
    )


def _info(record) -> CaptionInfo | None:  # noqa: ANN001
    if record is None:
        return None
    return CaptionInfo(status=record.status, caption=record.caption, structured=record.structured, notes=record.notes)


async def _sse(service: CaptionService, prepared: PreparedChat, ticket: Ticket, include_usage: bool):  # noqa: ANN001
    """OpenAI's chunk stream: the role chunk at once, then the text as the engine generates it (every row of a
    batch streams), then the finish reason. Each chunk's `capmill.tokens` says how many tokens existed when it
    was cut. A client that goes away cancels its row (Starlette cancels this generator)."""

    def chunk(delta: Delta, finish: str | None = None, usage: Usage | None = None, tokens: int | None = None) -> str:
        body = ChatCompletionChunk(
            id=prepared.id,
            created=prepared.created,
            model=prepared.model,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)] if usage is None else [],
            usage=usage,
            capmill=ChunkInfo(tokens=tokens) if tokens is not None else None,
        )
        return f"data: {body.model_dump_json(exclude_none=False)}\n\n"

    metrics = service.metrics
    metrics.streams.inc()
    first, waiter, getter = True, None, None
    try:
        yield chunk(Delta(role="assistant", content=""))
        waiter = asyncio.ensure_future(service.wait(ticket))
        deltas = ticket.deltas
        assert deltas is not None
        while not waiter.done() or not deltas.empty():
            getter = asyncio.ensure_future(deltas.get())
            await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                getter = None
                continue
            text, tokens = getter.result()
            if first:
                metrics.first_token.observe(time.perf_counter() - ticket.queued_at)
                first = False
            yield chunk(Delta(content=text), tokens=tokens)
        try:
            generation = waiter.result()
            if generation.error:
                raise HTTPProblem(502, f"generation failed: {generation.error}", code="generation_failed")
        except Exception as exc:
            yield f"data: {json.dumps(error_body(problem_for(exc)))}\n\n"
            yield "data: [DONE]\n\n"
            return
        rest = ticket.control.rest(generation.text)
        if rest:
            yield chunk(Delta(content=rest), tokens=generation.completion_tokens)
        yield chunk(Delta(), finish=generation.finish_reason, tokens=generation.completion_tokens)
        if include_usage:
            yield chunk(Delta(), usage=_usage(generation))
        yield "data: [DONE]\n\n"
    finally:
        metrics.streams.dec()
        if not ticket.future.done():  # the client left mid-stream: stop its row
            ticket.gone = True
            service.cancel(ticket, "disconnect")
        if getter is not None and not getter.done():
            getter.cancel()
        if waiter is not None and not waiter.done():
            waiter.cancel()
            waiter.add_done_callback(lambda t: t.cancelled() or t.exception())
        service.release(ticket)


@router.post(
    "/v1/captions",
    response_model=CaptionRecord,
    tags=["capmill"],
    responses=_ERRORS,
    openapi_extra=_CAPTION_BODY,
)
async def captions(request: Request) -> Any:
    service = service_of(request)
    async with before_queue(request.scope):
        item, mode, constrained = await _caption_input(request, service)
    started = time.perf_counter()
    arrival = request.scope.get("capmill.arrival")
    record = await service.caption(item, mode, arrival, constrained, request.scope, request.receive)
    record.timings.setdefault("server_s", time.perf_counter() - started)
    return JSONResponse(record.to_dict())


async def _caption_input(request: Request, service: CaptionService) -> tuple[Any, str | None, bool | None]:
    """The item of a /v1/captions request (multipart upload, JSON base64, or text), its mode and constraint flag."""
    config = request.app.state.config
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8, max_part_size=config.max_body_bytes)
        upload = form.get("file")
        mode, item_id, text = form.get("mode") or None, form.get("id") or None, form.get("text")
        constrained_field = form.get("constrained")
        for name, value in (("mode", mode), ("id", item_id), ("text", text), ("constrained", constrained_field)):
            if value is not None and not isinstance(value, str):
                raise bad_request(f"{name}: must be a form field, not a file", name)
        if upload is None or isinstance(upload, str):
            if text is None:
                raise bad_request("file: upload the image as the multipart field 'file'", "file")
            item = text_item(text, item_id)
        else:
            data = await upload.read()
            if len(data) > config.max_image_bytes:
                raise HTTPProblem(413, f"file: {len(data)} bytes exceeds {config.max_image_bytes} bytes", param="file")
            if not data:
                raise InputError(upload.filename or "file", "empty file")
            item = upload_item(data, upload.filename, item_id)
        constrained = _flag(constrained_field, "constrained")
    elif ctype in ("application/json", ""):
        raw = await request.body()
        if not raw:
            raise bad_request("send an image: multipart field 'file', or JSON {\"image\": base64}")
        try:
            body = CaptionRequest.model_validate_json(raw)
        except ValidationError as exc:
            message, param = validation_message(exc.errors())
            raise bad_request(message, param) from exc
        service.check_model(body.model)
        if (body.image is None) == (body.text is None):
            raise bad_request("send exactly one of 'image' (base64) or 'text'", "image")
        if body.image is not None:
            data = limits.image_or_base64(body.image, param="image", max_bytes=config.max_image_bytes)
            item = upload_item(data, None, body.id)
        else:
            item = text_item(body.text or "", body.id)
        mode, constrained = body.mode, body.constrained
    else:
        raise HTTPProblem(415, f"unsupported content type {ctype!r}: send multipart/form-data or application/json")
    return item, mode, constrained
