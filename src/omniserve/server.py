"""Run the whole server in one event loop: start the pipeline runtime, then
serve HTTP with uvicorn, then shut the runtime down."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import uvicorn

from omniserve import __version__
from omniserve.api.app import create_app
from omniserve.api.protocol.grammar import build as build_grammar
from omniserve.api.realtime.limits import MAX_EVENT_BYTES
from omniserve.config import PipelineConfig, ServerArgs
from omniserve.errors import ConfigError, StorageFailed
from omniserve.jobs.runner import VideoRunner
from omniserve.jobs.store import JobStore
from omniserve.memory import return_large_frees
from omniserve.runtime.client import Client, ServedModel
from omniserve.runtime.coordinator import Coordinator
from omniserve.runtime.grammar import GrammarBuilder
from omniserve.runtime.launcher import StageLoadError, launch_worker
from omniserve.runtime.routing import media_read, path_between
from omniserve.storage import DataDir
from omniserve.voice_library.store import VoiceLibrary

log = logging.getLogger(__name__)
KEEP_ALIVE_SECONDS = 30


def served_models(pipeline: PipelineConfig, coordinator: Coordinator) -> list[ServedModel]:
    """The ids /v1/models lists, as each stage's preset declared them (`StageConfig.serves`); the chat
    model first: it is the default."""
    created = int(time.time())
    out = []
    for stage in pipeline.stages:
        told = coordinator.pool.facts(stage.name)
        for served in stage.serves:
            facts = told
            for other, names in served.facts_from.items():
                facts = facts.with_facts(coordinator.pool.facts(other), names)
            path = path_between(pipeline, served.entry or stage.name, stage.name)
            out += [ServedModel(id=i, created=created, owned_by="omniserve", root=told.model_path or "",
                                max_model_len=told.context_length if served.kind in ("chat", "embedding") else None,
                                kind=served.kind, stage=stage.name, aliases=tuple(served.aliases), stages=tuple(path),
                                reads=media_read(pipeline, path, coordinator.reads), facts=facts,
                                lora_stage=served.lora_stage)
                    for i in served.ids]
    out.sort(key=lambda m: m.kind != "chat")
    return out


async def serve(settings: ServerArgs, pipeline: PipelineConfig) -> None:
    launch = launch_worker
    if settings.worker_backend == "ray":
        from omniserve.runtime.ray_backend import RayLauncher

        launch = RayLauncher(pipeline, settings.ray_object_store_min_bytes)
    data = DataDir(settings.data_dir)
    try:  # before any model loads: a data dir that cannot be written stops the start in one line
        store = JobStore(settings.data_dir / "jobs.sqlite3", data)
        voices = VoiceLibrary(settings.data_dir / "voices", data)
    except StorageFailed as exc:
        raise ConfigError(f"--data-dir: {exc.message}") from None
    coordinator = Coordinator(pipeline, settings.max_running_requests, settings.max_queued_requests,
                              settings.log_level, settings.stall_timeout, launch, settings.slow_reader_timeout)
    try:
        await coordinator.start()
    except StageLoadError as exc:
        await coordinator.shutdown()
        raise ConfigError(str(exc)) from None
    try:
        served = served_models(pipeline, coordinator)
        llm = next((m for m in served if m.kind == "chat" and m.facts.n_vocab), None)
        grammars = GrammarBuilder(build_grammar, llm.root, settings.grammar_timeout) if llm else None
        client = Client(coordinator, served, served[0].root, grammars)
        video_runner = VideoRunner(store, client, settings.data_dir / "videos")
        video_runner.start()
        app = create_app(settings, client, video_runner, data, voices)
        # an idle kept-alive connection is closed by the client first (httpx and the openai SDK after 5 s):
        # closing it at the same moment (uvicorn's default, 5 s) races with a client's next request on it
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                                access_log=False, timeout_graceful_shutdown=5, ws_max_size=MAX_EVENT_BYTES,
                                timeout_keep_alive=KEEP_ALIVE_SECONDS)
        log.info("omniserve %s serving %s on http://%s:%d (pid %d)", __version__, [m.id for m in served],
                 settings.host, settings.port, os.getpid())
        try:
            await uvicorn.Server(config).serve()
        finally:
            await app.state.realtime_calls.hang_up_all()
            await video_runner.stop()
            client.close()
            store.close()
            voices.close()
    finally:
        await coordinator.shutdown()


def run(settings: ServerArgs, pipeline: PipelineConfig) -> None:
    return_large_frees()
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional at heart
        factory = None
    if settings.worker_backend == "ray":
        from omniserve.runtime.ray_backend import start_ray, stop_ray

        start_ray(settings.ray_address)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(settings, pipeline))
    finally:
        if settings.worker_backend == "ray":
            stop_ray()
