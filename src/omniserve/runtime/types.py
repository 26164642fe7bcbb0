"""The one request type and the one output type that flow through the pipeline.

OpenAI shapes never reach this layer: routes translate into `OmniRequest`
and out of `OmniOutput`. Both are plain dataclasses so they pickle cheaply
across the worker pipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    max_tokens: int | None = None  # None: up to the context window
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)


@dataclass
class OmniRequest:
    request_id: str
    # Exactly one of `messages` (chat, rendered with the model's template) and
    # `prompt` (raw text or token ids) is set.
    messages: list[dict[str, Any]] | None = None
    prompt: str | list[int] | None = None
    sampling: dict[str, SamplingParams] = field(default_factory=dict)  # per stage name
    output_modalities: list[str] = field(default_factory=lambda: ["text"])

    def sampling_for(self, stage: str) -> SamplingParams:
        return self.sampling.get(stage) or SamplingParams()


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    token_bytes: list[int]
    top: list[tuple[str, float, list[int]]] = field(default_factory=list)


@dataclass
class OmniOutput:
    """An increment of one choice (`index`) of one request from one stage.

    `started` marks the first output of a request: it carries the prompt size
    and tells the route that validation passed, before any text exists.
    `finish_reason` closes a choice; `done` closes the whole request at that stage.
    """

    request_id: str
    stage: str = ""
    index: int = 0
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    started: bool = False
    done: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
