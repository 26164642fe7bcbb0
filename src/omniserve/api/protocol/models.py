"""Response models of `/v1/models`, the health and model info routes and the LoRA administration routes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from omniserve.api.protocol.common import omitted
from omniserve.runtime.facts import StageFacts


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


class ReplicaInfo(BaseModel):
    """One worker of a stage."""

    replica: int
    state: str  # up, starting, "restarting: why", "down: why"
    running: int  # the requests it holds
    pid: int | None
    node: str | None  # with --worker-backend ray: Ray's node id, and its address
    node_ip: str | None


class StageInfo(BaseModel):
    name: str
    executor: str
    pid: int | None
    healthy: bool
    running: int
    queued: int
    max_running_requests: int
    max_queued_requests: int
    info: StageFacts  # what its model told when it loaded
    replicas: list[ReplicaInfo]
    downstream: list[str]


class DataDirState(BaseModel):
    path: str
    problem: str | None  # why it cannot be written now


class ModelInfo(BaseModel):
    """`/get_model_info` (SGLang's, with each stage of the pipeline)."""

    model_path: str
    served_model_names: list[str]
    context_length: int | None
    stages: list[StageInfo]
    is_generation: bool
    data_dir: DataDirState


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
