"""The async facade the API routes use.

Routes never touch the coordinator or workers directly: they call
`generate`, `abort`, `health` and read the served models here. Today the
coordinator lives in the same process; a remote client would keep this API.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry

from omniserve import __version__
from omniserve.errors import InvalidRequest
from omniserve.runtime.coordinator import Coordinator
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.grammar import GrammarBuilder
from omniserve.runtime.messages import ControlOp
from omniserve.runtime.types import OmniOutput, OmniRequest


@dataclass
class ServedModel:
    """One id in /v1/models: what it does (`kind`), and the stage that does it."""

    id: str
    created: int
    owned_by: str
    max_model_len: int | None
    root: str
    kind: Literal["chat", "asr", "tts", "vision", "image", "embedding", "speaker"] = "chat"
    stage: str = "thinker"
    aliases: tuple[str, ...] = ()
    # the stages from the one a request to it enters to `stage` (routing.path_between); asr, vision or a talker
    # may join a request's route besides, as its media and outputs need; () when it is `stage` alone
    stages: tuple[str, ...] = ()
    # the media kinds ("audio", "image") a request to it may carry: what a stage on its path, or one feeding its
    # entry, reads (routing.media_read), so a request with others is a 400 before its media are fetched
    reads: frozenset[str] = frozenset()
    facts: StageFacts = field(default_factory=StageFacts)  # what its stage told when it loaded (voices, ...)
    lora_stage: str | None = None  # the stage its LoRA calls go to (an image model's denoiser)

    @property
    def path(self) -> tuple[str, ...]:
        """The stages from its entry to `stage`: each takes the model's settings (an image's size)."""
        return self.stages or (self.stage,)

    @property
    def entry(self) -> str:
        """The stage a request to this model enters (`OmniRequest.entry`)."""
        return self.path[0]

    @property
    def fingerprint(self) -> str:
        """OpenAI's `system_fingerprint`: it changes when the model file or the server version does."""
        return "fp_" + hashlib.sha256(f"{__version__}:{self.root}".encode()).hexdigest()[:12]


class Client:
    def __init__(self, coordinator: Coordinator, served_models: list[ServedModel], model_path: str,
                 grammars: GrammarBuilder | None = None):
        self.coordinator = coordinator
        self.grammars = grammars
        self.served_models = served_models
        self.model_path = model_path
        # metrics say which model each stage runs
        coordinator.metrics.set_models({stage: m.id for m in reversed(served_models) for stage in m.path})
        # the chat model's LoRA adapters, name -> path (kept in step with the thinker by /v1/*_lora_adapter)
        self.loras: dict[str, str] = dict(next((m.facts.loras or {} for m in served_models if m.kind == "chat"), {}))

    def generate(self, request: OmniRequest) -> AsyncIterator[OmniOutput]:
        return self.coordinator.generate(request)

    async def control(self, stage: str, op: ControlOp) -> Any:
        """A stage administration call (LoRA adapters): its result, or its error."""
        return await self.coordinator.control(stage, op)

    async def build_grammar(self, spec: Any, owner: str = "") -> str | None:
        """The GBNF a request's output must follow (None: free text), built out of this process. `owner`: the
        client that asks (builds are shared fairly among clients)."""
        if spec is None:
            return None
        if self.grammars is None:
            raise InvalidRequest(f"{spec.param}: this server's chat model takes no output grammar", param=spec.param)
        return await self.grammars.build(spec, owner)

    def close(self) -> None:
        if self.grammars is not None:
            self.grammars.close()

    def abort(self, request_id: str) -> None:
        self.coordinator.abort(request_id)

    def health(self) -> tuple[bool, str]:
        ok = self.coordinator.pool.healthy()
        return ok, "" if ok else self.coordinator.pool.unhealthy_reason()

    def model(self, model_id: str | None, kind: str = "chat") -> ServedModel | None:
        """The served model for a request's `model` field (None: the first of that kind). One id may
        name models of several kinds (an omni checkpoint chats and speaks): `kind`'s comes first."""
        if model_id is None:
            return next((m for m in self.served_models if m.kind == kind), None)
        named = [m for m in self.served_models if model_id == m.id or model_id in m.aliases]
        return next((m for m in named if m.kind == kind), named[0] if named else None)

    def stage_executors(self) -> list[tuple[str, str]]:
        """(stage name, executor) for each stage of the pipeline."""
        return [(s.name, s.executor) for s in self.coordinator.pipeline.stages]

    def load(self) -> dict[str, Any]:
        """Requests in flight and waiting, in all and per stage."""
        c = self.coordinator
        return {"running": c.num_running, "queued": c.num_queued,
                "stages": {s["name"]: {"running": s["running"], "queued": s["queued"]} for s in c.stage_info()}}

    def count_answer_ahead(self, outcome: str) -> None:
        """A realtime answer begun at the speaker's pause was `taken` or `dropped`."""
        self.coordinator.metrics.answers_ahead.labels(outcome).inc()

    def metrics_registry(self) -> CollectorRegistry:
        return self.coordinator.metrics.registry

    def stage_health(self) -> dict[str, str | None]:
        """Each stage's problem (None: healthy)."""
        return {s.name: self.coordinator.pool.problem(s.name) for s in self.coordinator.pipeline.stages}

    def model_info(self) -> dict[str, Any]:
        stages = self.coordinator.stage_info()
        return {
            "model_path": self.model_path,
            "served_model_names": [m.id for m in self.served_models],
            "context_length": self.model(None).max_model_len,
            "stages": stages,
            "is_generation": True,
        }
