"""Typed configuration: server settings and the pipeline graph.

`ServerArgs` is the one settings object: CLI flags first, then `OMNISERVE_*`
environment variables, then defaults. No other module reads `os.environ`.
`PipelineConfig` is the stage graph as validated data; a YAML file given with
`--config` overrides any stage setting and is checked at start-up.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from omniserve.errors import ConfigError
from omniserve.runtime.facts import StageFacts
from omniserve.validation import first_error


class ServerArgs(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OMNISERVE_", extra="forbid")

    model_path: str | None = Field(None, description="GGUF file, folder holding one, alias, or a Qwen-Omni "
                                   "checkpoint (Hugging Face folder or cached hub id)")
    dtype: str = Field("auto", pattern="^(auto|float32|bfloat16|float16)$",
                       description="weights of a Hugging Face checkpoint: auto is bfloat16 on CUDA, float32 on CPU")
    gpu_thinker: int | None = Field(None, ge=0)
    gpu_talker: int | None = Field(None, ge=0)
    gpu_code2wav: int | None = Field(None, ge=0)
    config: Path | None = Field(None, description="pipeline YAML overriding stage settings")
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    served_model_name: list[str] | None = None
    log_level: str = "info"
    api_key: str | None = None
    max_running_requests: int = Field(8, ge=1, le=256)
    max_queued_requests: int = Field(128, ge=0)
    grammar_timeout: float = Field(5.0, gt=0, description="longest a structured-output grammar may take to build")
    stall_timeout: float = Field(300.0, ge=0, description="restart a stage worker stuck this long (0: never)")
    slow_reader_timeout: float = Field(30.0, ge=0, description="stop a request whose client has not read its "
                                       "waiting output this long (0: never)")
    context_length: int | None = Field(None, ge=16)
    threads: int | None = Field(None, ge=1)
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    enable_cache_report: bool = False
    disable_playground: bool = False
    allowed_origins: list[str] = Field(default_factory=list, description="web origins (scheme://host[:port]) "
                                       "besides the server's own that may call it from a browser (CORS and the "
                                       "realtime WebSocket); * allows any")
    public_base_url: str | None = Field(None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
                                        description="the server's address as clients reach it (links to stored "
                                        "images); default: the address the request came in on")
    realtime_max_sessions: int = Field(64, ge=1, description="realtime sessions open at once")
    realtime_idle_timeout: float = Field(600.0, ge=0, description="close a realtime session that has sent nothing "
                                         "for this long while no response runs (0: never)")
    realtime_max_items: int = Field(1000, ge=1, description="items one realtime conversation may hold")
    realtime_ice_servers: list[str] = Field(default_factory=list, description="STUN servers (stun:host:port) a "
                                            "WebRTC call gathers candidates from")
    realtime_max_session_mib: float = Field(64.0, gt=0, description="memory one realtime session's items and "
                                            "audio may take")
    default_max_tokens: int | None = Field(None, ge=1, description="tokens a chat or completion writes when it "
                                           "names no max_tokens (default: what the context leaves)")
    worker_backend: Literal["mp", "ray"] = Field("mp", description="stage workers: local processes, or Ray actors")
    ray_address: str | None = Field(None, description="the Ray cluster to join (auto: this machine's; none: a "
                                    "local one)")
    ray_object_store_min_bytes: int = Field(256 * 1024, ge=0, description="payloads between stages this large "
                                            "(pickled) or larger go through Ray's object store")
    disable_radix_cache: bool = False
    data_dir: Path = Path.home() / ".cache" / "omniserve"
    asr_model: str = Field("whisper-tiny.en", description="speech-to-text alias, Whisper folder, or none")
    # NoDecode: OMNISERVE_TTS_MODEL is read as text ("none", "a b", "a,b", or a JSON list), not as JSON only
    tts_model: Annotated[list[str], NoDecode] = Field(
        ["piper-joe-medium", "kokoro-82m"], min_length=1,
        description="voice models, each a talker stage, the first the default: aliases, Piper .onnx files, Kokoro "
                    "folders; or none")

    @field_validator("tts_model", mode="before")
    @classmethod
    def _tts_models_as_text(cls, value: Any) -> Any:
        """Several models may be given as one string (a YAML file, the environment): a JSON list, or names
        split by commas or spaces."""
        if not isinstance(value, str):
            return value
        if value.strip().startswith("["):
            return json.loads(value)
        return [part for part in re.split(r"[,\s]+", value) if part]
    speaker_model: str = Field("resemblyzer-ge2e", description="speaker embeddings for the voice library's "
                               "consent checks: resemblyzer-ge2e, or none")
    voice_match_threshold: float = Field(0.75, gt=0, le=1, description="cosine similarity of speaker embeddings "
                                         "a voice sample needs with its consent recording")
    max_audio_seconds: float = Field(600.0, gt=0)
    max_media_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    media_fetch_timeout: float = Field(30.0, gt=0, description="deadline for fetching one media URL")
    allow_private_media_urls: bool = False
    allowed_local_media_path: Path | None = None
    max_image_pixels: int = Field(25_000_000, ge=1)
    max_video_seconds: float = Field(300.0, gt=0)
    max_media_items: int = Field(16, ge=1)
    embedding_model: str = Field("all-minilm-l6-v2", description="embeddings: all-minilm-l6-v2, or none")
    vision_model: str = Field("imagenet-ocr", description="image description alias, or none")
    image_model: str | None = Field(None, description="image generation: KIND:PATH, e.g. sketch-rnn:/dir")
    image_ttl_seconds: float = Field(3600.0, gt=0)
    strict_image_prompts: bool = False
    max_video_jobs: int = Field(16, ge=1)
    lora_dir: Path | None = Field(None, description="where /v1/set_lora may load adapters from (default: "
                                  "<data-dir>/loras)")
    mmproj: Path | None = None
    lora_paths: list[str] | None = Field(None, description="chat-model LoRA adapters at start: NAME=PATH.gguf")
    # Accepted for compatibility with sglang-omni / SGLang / vLLM-Omni command lines.
    text_only: bool = False
    colocate: bool = False
    mem_fraction_static: float | None = Field(None, gt=0, lt=1)
    thinker_mem_fraction_static: float | None = Field(None, gt=0, lt=1)
    talker_mem_fraction_static: float | None = Field(None, gt=0, lt=1)
    max_generated_image_size: int | None = Field(None, ge=1)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            origin = value.strip().rstrip("/")
            if origin not in ("*", "null") and not re.fullmatch(r"https?://[^\s/?#@]+", origin):
                raise ValueError(f"{value!r} is not an origin: give scheme://host[:port], such as "
                                 "https://app.example:8443, or *")
            out.append(origin)
        return out

    @field_validator("realtime_ice_servers")
    @classmethod
    def _stun(cls, values: list[str]) -> list[str]:
        for value in values:
            if not re.fullmatch(r"stuns?:[^\s/?#@:]+(:\d+)?", value):
                raise ValueError(f"{value!r} is not a STUN server: give stun:HOST:PORT, such as "
                                 "stun:stun.example:3478 (TURN servers are not supported yet)")
        return values

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        levels = ("critical", "error", "warning", "info", "debug", "trace")
        if value.lower() not in levels:
            raise ValueError(f"must be one of {', '.join(levels)}")
        return value.lower()

    def resolved_threads(self) -> int:
        return self.threads or max(1, os.cpu_count() or 1)

    def stage_mem_fraction(self, stage: str) -> float | None:
        """A per-stage fraction overrides the global one."""
        per_stage = {"thinker": self.thinker_mem_fraction_static, "talker": self.talker_mem_fraction_static}
        return per_stage.get(stage) or self.mem_fraction_static


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Placement(_Strict):
    """Where a stage runs: its device (for executors that take one; None: the executor's own default), and
    the worker process it shares with the other stages of its group (None: a process of its own)."""

    process_group: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]*$")
    device: str | None = None
    # With --worker-backend ray: what the stage's actor reserves on its node (custom resources pin it to
    # nodes that have them, such as {"node:10.0.0.2": 0.01}, or a resource given to `ray start --resources`)
    num_cpus: float | None = Field(None, ge=0)
    num_gpus: float | None = Field(None, ge=0)
    resources: dict[str, float] = Field(default_factory=dict)
    # How many workers serve this stage (data-parallel): each request goes to the least loaded one and stays
    # there. A process group's stages share their workers, so they must agree on it.
    replicas: int = Field(1, ge=1)


class ServedAs(_Strict):
    """Model ids a stage answers for in /v1/models, declared by the preset that made the stage."""

    ids: list[str] = Field(min_length=1)
    kind: Literal["chat", "asr", "tts", "vision", "image", "embedding", "speaker"]
    aliases: list[str] = Field(default_factory=list)  # other names requests may use (OpenAI's, say)
    # the stage a request to it enters, when not this one (an omni checkpoint's voice: the thinker); the stages
    # between are planned from the graph (runtime/routing.py)
    entry: str | None = None
    # other stages' load facts it carries (a talker's voices, a denoiser's LoRA support): stage -> StageFacts fields
    facts_from: dict[str, list[str]] = Field(default_factory=dict)
    lora_stage: str | None = None  # the stage its LoRA calls go to (an image model's denoiser)

    @field_validator("facts_from")
    @classmethod
    def _known_facts(cls, facts_from: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted({name for names in facts_from.values() for name in names} - set(StageFacts.model_fields))
        if unknown:
            raise ValueError(f"no stage tells {', '.join(unknown)}; what stages tell: "
                             f"{', '.join(StageFacts.model_fields)}")
        return facts_from


class StageConfig(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    executor: str
    args: dict[str, Any] = Field(default_factory=dict)
    placement: Placement = Field(default_factory=Placement)
    serves: list[ServedAs] = Field(default_factory=list)
    max_restarts: int = Field(5, ge=0)
    # admission for this stage alone (None: --max-running-requests / --max-queued-requests)
    max_running_requests: int | None = Field(None, ge=1)
    max_queued_requests: int | None = Field(None, ge=0)
    # seconds its worker may spend in one step before it counts as stuck (None: --stall-timeout; 0: never)
    stall_timeout: float | None = Field(None, ge=0)

    @field_validator("executor")
    @classmethod
    def _known_executor(cls, name: str) -> str:
        """A registry name, or a class's import path that imports (an error says what is wrong, under `executor`)."""
        from omniserve.executors import spec

        spec(name)
        return name

    @model_validator(mode="after")
    def _check_executor_args(self) -> StageConfig:
        from omniserve.executors import executor_args_model

        args_model = executor_args_model(self.executor)
        args = dict(self.args)
        if self.placement.device is not None and "device" in args_model.model_fields:
            args["device"] = self.placement.device  # the placement says where the executor runs
        # Validate now so a bad YAML fails at start-up, naming the field.
        try:
            self.args = args_model.model_validate(args).model_dump()
        except ValidationError as exc:
            loc, message = first_error(exc)
            raise ValueError(f"args.{'.'.join(map(str, loc))}: {message}") from None
        return self


class EdgeConfig(_Strict):
    src: str
    dst: str
    streaming: bool = False


class PipelineConfig(_Strict):
    stages: list[StageConfig] = Field(min_length=1)
    edges: list[EdgeConfig] = Field(default_factory=list)
    # With --worker-backend ray: reserve every worker of the pipeline at once, in one Ray placement group with
    # this strategy (None: each worker is placed on its own, when it starts)
    placement_strategy: Literal["pack", "spread", "strict_pack", "strict_spread"] | None = None

    @model_validator(mode="after")
    def _check_graph(self) -> PipelineConfig:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for edge in self.edges:
            for end in (edge.src, edge.dst):
                if end not in names:
                    raise ValueError(f"edge {edge.src}->{edge.dst} names unknown stage {end!r}")
        from omniserve.executors import takes_upstream

        for edge in self.edges:
            executor = next(s.executor for s in self.stages if s.name == edge.dst)
            if not takes_upstream(executor):
                raise ValueError(f"edge {edge.src}->{edge.dst}: executor {executor!r} takes no upstream input")
        if _has_cycle(names, self.edges):
            raise ValueError("the stage graph has a cycle")
        from omniserve.runtime.routing import path_between

        for stage in self.stages:
            for served in stage.serves:
                named = {"entry": [served.entry], "facts_from": list(served.facts_from),
                         "lora_stage": [served.lora_stage]}
                for key, others in named.items():
                    unknown = next((other for other in others if other is not None and other not in names), None)
                    if unknown is not None:
                        raise ValueError(f"stage {stage.name!r} serves {served.ids[0]!r} with {key} naming unknown "
                                         f"stage {unknown!r}")
                if served.entry is not None:
                    path_between(self, served.entry, stage.name)
        for group in self.process_groups():
            if len({s.placement.replicas for s in group}) > 1:
                raise ValueError(f"the stages of process group {group[0].placement.process_group!r} share their "
                                 "workers, so their placement.replicas must be equal")
        return self

    def process_groups(self) -> list[list[StageConfig]]:
        """The stages each worker runs: a process group's stages together, any other alone."""
        groups: dict[str, list[StageConfig]] = {}
        for stage in self.stages:
            groups.setdefault(stage.placement.process_group or f"stage:{stage.name}", []).append(stage)
        return list(groups.values())

    def stage(self, name: str) -> StageConfig:
        return next(s for s in self.stages if s.name == name)

    def downstream(self, name: str) -> list[EdgeConfig]:
        return [e for e in self.edges if e.src == name]

    def with_overrides(self, overrides: dict[str, Any]) -> PipelineConfig:
        """Deep-merge a YAML override (stages keyed by name) and re-validate."""
        data = self.model_dump()
        unknown = set(overrides) - {"stages", "edges", "placement_strategy"}
        if unknown:
            raise ConfigError(f"config: unknown top-level key(s) {sorted(unknown)}; use stages, edges, "
                              "placement_strategy (a request's route through the stages is planned for it)")
        stage_overrides = overrides.get("stages") or {}
        if not isinstance(stage_overrides, dict):
            raise ConfigError("config: 'stages' must map stage names to settings")
        by_name = {s["name"]: s for s in data["stages"]}
        for name, patch in stage_overrides.items():
            if name not in by_name:
                raise ConfigError(f"config: unknown stage {name!r}; stages are {sorted(by_name)}")
            if not isinstance(patch, dict):
                raise ConfigError(f"config: stages.{name} must be a mapping")
            _deep_merge(by_name[name], patch)
        for key in ("edges", "placement_strategy"):
            if key in overrides:
                data[key] = overrides[key]
        return validate_pipeline(data)


def validate_pipeline(data: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"config: {describe_validation_error(exc, data)}") from None


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def describe_validation_error(exc: ValidationError, data: Any = None) -> str:
    """One line naming the field, e.g. `stages.thinker.args.n_batch: Input should be ...`."""
    where_, msg = first_error(exc)
    loc = list(where_)
    # Replace list indexes under `stages` with the stage name, which a person wrote.
    if data is not None and len(loc) >= 2 and loc[0] == "stages" and isinstance(loc[1], int):
        try:
            loc[1] = data["stages"][loc[1]]["name"]
        except (KeyError, IndexError, TypeError):
            pass
    where = ".".join(str(p) for p in loc)
    nested = msg.split(": ", 1)
    if len(nested) == 2 and nested[0].startswith("args."):  # a stage's executor args, named in full
        where, msg = f"{where}.{nested[0]}" if where else nested[0], nested[1]
    return f"{where}: {msg}" if where else msg


def _deep_merge(base: dict, patch: dict) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _has_cycle(names: list[str], edges: list[EdgeConfig]) -> bool:
    graph = {n: [e.dst for e in edges if e.src == n] for n in names}
    state: dict[str, int] = {}

    def visit(node: str) -> bool:
        if state.get(node) == 1:
            return True
        if state.get(node) == 2:
            return False
        state[node] = 1
        if any(visit(nxt) for nxt in graph[node]):
            return True
        state[node] = 2
        return False

    return any(visit(n) for n in names)
