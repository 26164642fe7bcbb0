"""Run the whole server in one event loop: start the pipeline runtime, then
serve HTTP with uvicorn, then shut the runtime down."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import uvicorn

from omniserve import __version__
from omniserve.api.app import create_app
from omniserve.api.protocol.grammar import build as build_grammar
from omniserve.config import PipelineConfig, ServerArgs
from omniserve.errors import ConfigError
from omniserve.jobs.runner import VideoRunner
from omniserve.jobs.store import JobStore
from omniserve.models.image_gen import DIFFUSION_STAGES, resolve_image_model
from omniserve.models.minilm import ALIASES as EMBEDDING_ALIASES
from omniserve.models.minilm import SERVED_ID as EMBEDDING_ID
from omniserve.models.qwen_omni import STAGES, TALKER, is_hub_id
from omniserve.models.registry import speech_models, vision_model
from omniserve.models.speech import ASR_OPENAI_NAMES, TTS_OPENAI_NAMES
from omniserve.runtime.client import Client, ServedModel
from omniserve.runtime.coordinator import Coordinator
from omniserve.runtime.grammar import GrammarBuilder
from omniserve.runtime.launcher import StageLoadError

log = logging.getLogger(__name__)


def served_model_ids(settings: ServerArgs) -> list[str]:
    if settings.served_model_name:
        return list(settings.served_model_name)
    if settings.model_path and is_hub_id(settings.model_path):
        return [settings.model_path]  # as clients of sglang-omni and vLLM-Omni name it
    name = Path(settings.model_path or "smollm2-135m").name
    return [name.removesuffix(".gguf")]


def served_models(settings: ServerArgs, pipeline: PipelineConfig, coordinator: Coordinator) -> list[ServedModel]:
    """The ids /v1/models lists: the chat model(s), then one per speech and vision stage."""
    created = int(time.time())
    asr, tts = speech_models(settings)
    vision = vision_model(settings, make=False)
    image = resolve_image_model(settings.image_model)
    out = []
    for stage in pipeline.stages:
        info = coordinator.workers[stage.name].info
        common = {"created": created, "owned_by": "omniserve", "root": info.get("model_path", ""),
                  "stage": stage.name, "info": info}
        if stage.executor in ("llamacpp", "qwen_omni_thinker"):
            out += [ServedModel(id=i, max_model_len=info.get("context_length"), **common)
                    for i in served_model_ids(settings)]
        elif stage.executor == "whisper":
            out.append(ServedModel(id=asr.id if asr else stage.name, max_model_len=None, kind="asr",
                                   aliases=ASR_OPENAI_NAMES, **common))
        elif stage.executor == "piper":
            out.append(ServedModel(id=tts.id if tts else stage.name, max_model_len=None, kind="tts",
                                   aliases=TTS_OPENAI_NAMES, **common))
        elif stage.executor in ("qwen_omni_code2wav", "qwen3_omni_code2wav"):  # thinker ⇢ talker ⇢ code2wav
            talker = coordinator.workers[TALKER].info
            common["info"] = {**info, "voices": talker["voices"]}
            out += [ServedModel(id=i, max_model_len=None, kind="tts", aliases=TTS_OPENAI_NAMES, route=STAGES,
                                **common) for i in served_model_ids(settings)]
        elif stage.executor in ("describer", "mtmd"):
            out.append(ServedModel(id=vision.id if vision else stage.name, max_model_len=None, kind="vision",
                                   **common))
        elif stage.executor == "embedder":
            out.append(ServedModel(id=EMBEDDING_ID, max_model_len=info.get("context_length"), kind="embedding",
                                   aliases=EMBEDDING_ALIASES, **common))
        elif stage.executor == "sketch_rnn":
            out.append(ServedModel(id=image.id if image else stage.name, max_model_len=None, kind="image",
                                   **common))
        elif stage.executor == "diffusers_vae":  # the last of the three diffusion stages stands for them
            denoiser = coordinator.workers[DIFFUSION_STAGES[1]].info
            common["info"] = {**info, "lora": denoiser.get("lora", False), "lora_stage": DIFFUSION_STAGES[1]}
            out.append(ServedModel(id=image.id if image else stage.name, max_model_len=None, kind="image",
                                   route=DIFFUSION_STAGES, **common))
    out.sort(key=lambda m: m.kind != "chat")  # the chat model first: it is the default
    return out


async def serve(settings: ServerArgs, pipeline: PipelineConfig) -> None:
    coordinator = Coordinator(pipeline, settings.max_running_requests, settings.max_queued_requests,
                              settings.log_level, settings.stall_timeout)
    try:
        await coordinator.start()
    except StageLoadError as exc:
        await coordinator.shutdown()
        raise ConfigError(str(exc)) from None
    try:
        served = served_models(settings, pipeline, coordinator)
        llm = next((m for m in served if m.kind == "chat" and m.info.get("n_vocab")), None)
        grammars = GrammarBuilder(build_grammar, llm.root, settings.grammar_timeout) if llm else None
        client = Client(coordinator, served, served[0].root, grammars)
        store = JobStore(settings.data_dir / "jobs.sqlite3")
        video_runner = VideoRunner(store, client, settings.data_dir / "videos")
        video_runner.start()
        config = uvicorn.Config(create_app(settings, client, video_runner), host=settings.host, port=settings.port,
                                log_level=settings.log_level, access_log=False, timeout_graceful_shutdown=5)
        log.info("omniserve %s serving %s on http://%s:%d (pid %d)", __version__, [m.id for m in served],
                 settings.host, settings.port, os.getpid())
        try:
            await uvicorn.Server(config).serve()
        finally:
            await video_runner.stop()
            client.close()
            store.close()
    finally:
        await coordinator.shutdown()


def run(settings: ServerArgs, pipeline: PipelineConfig) -> None:
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but optional at heart
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(settings, pipeline))
