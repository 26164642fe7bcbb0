"""Response models of `/v1/models`, the health routes and the LoRA administration routes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from omniserve.api.protocol.common import omitted


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str | None = None
    parent: str | None = None
    type: Literal["chat", "asr", "tts", "vision", "image", "embedding", "speaker"]
    max_model_len: int | None = omitted()
    aliases: list[str] | None = omitted()  # the other names that reach it (OpenAI's model names)
    output_modalities: list[Literal["image", "video"]] | None = omitted()  # an image model's: videos too?


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["healthy", "unhealthy"]
    running: bool
    reason: str | None = omitted()  # why not, when unhealthy
    stages: dict[str, str] | None = omitted()  # each stage's state, when unhealthy
    storage: str | None = omitted()  # why --data-dir cannot be written now (video jobs and stored images wait)


class StageLoad(BaseModel):
    running: int
    queued: int


class Load(StageLoad):
    stages: dict[str, StageLoad]


class LoraAdapters(BaseModel):
    """The chat model's adapters after a load or unload, name -> path."""

    success: bool
    error_message: str
    loaded_adapters: dict[str, str]


class DiffusionLoras(BaseModel):
    """SGLang Diffusion's answer to a LoRA call on the image model: the adapters set, and whether
    they are merged into the weights."""

    loras: list[dict[str, Any]]
    merged: bool
