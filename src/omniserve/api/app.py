"""The FastAPI application: routers, error handlers and middleware around a
ready `Client`. The runtime is started before the app (see `server.py`), so
the port only accepts requests once every stage has loaded its model."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from omniserve import __version__
from omniserve.api import openapi
from omniserve.api.errors import install_error_handlers
from omniserve.api.middleware import OPEN_PATHS, ApiKeyMiddleware, BodyLimitMiddleware, SameOriginMiddleware
from omniserve.api.realtime.limits import SessionCount
from omniserve.api.realtime.secrets import ClientSecrets
from omniserve.api.realtime.webrtc import RealtimeCalls
from omniserve.api.routes import (
    audio,
    chat,
    completions,
    diffusion_lora,
    embeddings,
    health,
    images,
    lora,
    models,
    playground,
    realtime,
    videos,
    voice_library,
)
from omniserve.config import ServerArgs
from omniserve.jobs.runner import VideoRunner
from omniserve.runtime.client import Client
from omniserve.storage import DataDir
from omniserve.voice_library.store import VoiceLibrary


def create_app(settings: ServerArgs, client: Client, video_runner: VideoRunner | None = None,
               data: DataDir | None = None, voices: VoiceLibrary | None = None) -> FastAPI:
    app = FastAPI(title="omniserve", version=__version__)
    app.state.client = client
    app.state.videos = video_runner
    app.state.settings = settings
    app.state.data = data or DataDir(settings.data_dir)
    app.state.voice_library = voices
    app.state.realtime_sessions = SessionCount(settings.realtime_max_sessions)
    app.state.client_secrets = ClientSecrets()
    app.state.realtime_calls = RealtimeCalls()
    install_error_handlers(app)
    openapi.install(app)
    for router in (chat.router, completions.router, embeddings.router, audio.router, images.router, videos.router,
                   diffusion_lora.router, lora.router, models.router, health.router, realtime.router,
                   voice_library.router):
        app.include_router(router)
    open_paths, open_prefixes = OPEN_PATHS, ()
    if not settings.disable_playground:
        playground.install(app)
        open_paths, open_prefixes = open_paths | playground.PAGES_PATHS, (playground.STATIC + "/",)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key, open_paths=open_paths,
                           open_prefixes=open_prefixes, also=app.state.client_secrets.opens)
    app.add_middleware(SameOriginMiddleware, allowed_origins=settings.allowed_origins)
    if settings.allowed_origins:  # outermost: a preflight is answered before any check
        app.add_middleware(CORSMiddleware, allow_origins=settings.allowed_origins, allow_methods=["*"],
                           allow_headers=["*"])
    return app
