"""The FastAPI application: routers, error handlers, middleware, and a
lifespan that starts the pipeline runtime before the port accepts requests."""

from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from omniserve import __version__
from omniserve.api.errors import install_error_handlers
from omniserve.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from omniserve.api.routes import chat, completions, health, models
from omniserve.config import PipelineConfig, ServerArgs
from omniserve.runtime.client import Client, ServedModel
from omniserve.runtime.coordinator import Coordinator

log = logging.getLogger(__name__)


def served_model_ids(settings: ServerArgs, model_path: str) -> list[str]:
    if settings.served_model_name:
        return list(settings.served_model_name)
    given = settings.model_path or "smollm2-135m"
    name = Path(given).name
    return [name.removesuffix(".gguf") if name.endswith(".gguf") else name]


def create_app(settings: ServerArgs, pipeline: PipelineConfig) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        coordinator = Coordinator(
            pipeline, settings.max_running_requests, settings.max_queued_requests, settings.log_level
        )
        await coordinator.start()
        thinker = coordinator.workers[pipeline.terminals[0]].info
        created = int(time.time())
        served = [
            ServedModel(id=i, created=created, owned_by="omniserve", max_model_len=thinker.get("context_length", 0),
                        root=thinker.get("model_path", ""))
            for i in served_model_ids(settings, thinker.get("model_path", ""))
        ]
        client = Client(coordinator, served, thinker.get("model_path", ""))
        app.state.client = client
        app.state.metrics_registry = health.metrics_registry(client)
        log.info("omniserve %s ready on http://%s:%d (pid %d)", __version__, settings.host, settings.port, os.getpid())
        try:
            yield
        finally:
            await coordinator.shutdown()

    app = FastAPI(title="omniserve", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    for router in (chat.router, completions.router, models.router, health.router):
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)  # outermost: checked first
    return app
