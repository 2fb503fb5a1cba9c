"""`create_app(config)`: the FastAPI app with its services on `app.state` (captioner service, browse, metrics)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from capmill import __version__
from capmill.serve.config import ServeConfig
from capmill.serve.guards import GENERATING_PATHS
from capmill.serve.metrics import Metrics


def load_captioner(config: ServeConfig) -> Any:
    """The real Captioner for the configured model (loads the checkpoint; slow)."""
    from capmill.captioner import Captioner
    from capmill.engines import ENGINES

    options = dict(config.captioner_options)
    engine_options = dict(options.pop("engine_options", {}))
    # An engine that splits large batches must not split the server's batches below --max-batch.
    if "max_batch_size" in ENGINES.get(config.engine).Options.model_fields:
        engine_options.setdefault("max_batch_size", config.max_batch)
    return Captioner(
        model=config.model, profile=config.profile, engine=config.engine, engine_options=engine_options, **options
    )


def create_app(config: ServeConfig, captioner: Any | None = None) -> Any:
    """Build the app. `captioner` lets tests and embedders pass one already loaded; otherwise `config.model`
    is loaded at startup. Without a model the server only browses `config.browse_dir`."""
    from fastapi import FastAPI

    from capmill.serve import httperrors
    from capmill.serve.auth import APIKeyAuth
    from capmill.serve.browse import BrowseService
    from capmill.serve.gallery_routes import router as gallery_router
    from capmill.serve.guards import ClientLimit, ReceiveDeadline
    from capmill.serve.limits import BodyLimit
    from capmill.serve.router import router
    from capmill.serve.service import CaptionService

    metrics = Metrics()
    browse = (
        BrowseService(config.browse_dir, config.browse_roots) if config.browse_dir else None
    )  # a bad folder fails at once

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        owned = None
        service = None
        if captioner is not None or config.model:
            if captioner is None:
                import asyncio

                owned = await asyncio.to_thread(load_captioner, config)
            service = CaptionService(captioner or owned, config, metrics)
            await service.start()
        app.state.service = service
        try:
            yield
        finally:
            if service is not None:
                await service.stop()
            if owned is not None:
                owned.close()
            if browse is not None:
                browse.close()

    app = FastAPI(
        title="capmill",
        version=__version__,
        description="OpenAI-compatible captioning server with dynamic batching, /v1/captions and a web gallery.",
        lifespan=lifespan,
    )
    app.state.config = config
    app.state.metrics = metrics
    app.state.browse = browse
    app.state.service = None
    httperrors.install(app)
    app.include_router(router)
    app.include_router(gallery_router)
    # Order matters: metrics see every answer (401, 413, 429 too); auth runs before the body is read.
    app.add_middleware(EarlyArrivals)
    app.add_middleware(ReceiveDeadline, seconds=config.receive_timeout_s)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(ClientLimit, limit=config.max_inflight_per_client)
    if config.api_key:
        app.add_middleware(APIKeyAuth, api_key=config.api_key)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


class EarlyArrivals:
    """ASGI middleware: a generating request counts as on its way to the batcher from its first byte, before
    its body is read and its images decoded, so the batch forming meanwhile waits for it (see Batcher)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        service = getattr(scope.get("app"), "state", None) and scope["app"].state.service
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in GENERATING_PATHS or not service:
            return await self.app(scope, receive, send)
        with service.batcher.arrival() as arrival:
            scope["capmill.arrival"] = arrival  # the handler closes it once the request is queued
            await self.app(scope, receive, send)


class RequestMetrics:
    """ASGI middleware: counts each answer by route template, method and status, and times it."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def recording_send(message):  # noqa: ANN001
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.request_done(label, scope["method"], status, time.perf_counter() - started)
