"""`POST /v1/chat/completions` request model and its translation to OmniRequest."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from omniserve.api.protocol.common import SamplingFields, validate_fields
from omniserve.errors import InvalidRequest
from omniserve.runtime.types import OmniRequest, audio_part

AUDIO_PART_TYPES = ("input_audio", "audio_url")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class AudioOutput(BaseModel):
    """`audio: {voice, format}` for `modalities: ["text", "audio"]`."""

    voice: str | dict[str, Any] | None = None
    format: Literal["wav", "mp3", "flac", "opus", "aac", "pcm16", "pcm"] = "wav"

    @property
    def voice_name(self) -> str | None:
        return self.voice.get("id") if isinstance(self.voice, dict) else self.voice

    @property
    def encoding(self) -> str:
        return "pcm" if self.format == "pcm16" else self.format


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None
    audios: list[str | dict[str, Any]] | None = None  # sglang-omni: audio for the last user message
    stage_sampling: dict[str, dict[str, Any]] | None = None  # sglang-omni: sampling per stage name
    stage_params: dict[str, dict[str, Any]] | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        return self

    @property
    def wants_audio(self) -> bool:
        return bool(self.modalities and "audio" in self.modalities)

    def audio_refs(self) -> list[tuple[str, Any]]:
        """Every audio input, in order, with where it sits: message parts, then top-level `audios`."""
        refs = []
        for i, message in enumerate(self.messages):
            for j, part in enumerate(message.content if isinstance(message.content, list) else []):
                if part.get("type") in AUDIO_PART_TYPES:
                    refs.append((f"messages[{i}].content[{j}]", part.get(part["type"])))
        refs += [(f"audios[{k}]", ref) for k, ref in enumerate(self.audios or [])]
        return refs

    def per_stage(self) -> dict[str, dict[str, Any]]:
        """`stage_sampling` overlaid with `stage_params`, by stage name."""
        merged: dict[str, dict[str, Any]] = {}
        for source in (self.stage_sampling or {}, self.stage_params or {}):
            for stage, values in source.items():
                merged.setdefault(stage, {}).update(values)
        return merged

    def to_omni_request(self, request_id: str, audios: list[Any] | None = None, stage: str = "thinker",
                        overrides: dict[str, Any] | None = None) -> OmniRequest:
        """`overrides`: this LLM stage's `stage_sampling`, laid over the top-level sampling fields."""
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise InvalidRequest(
                f"response_format type {self.response_format.get('type')!r} is not supported yet; use 'text'",
                param="response_format",
            )
        if self.tools:
            raise InvalidRequest("tools are not supported yet by this server", param="tools")
        fields = self
        if overrides:
            base = self.model_dump(include=set(SamplingFields.model_fields), exclude_none=True)
            fields = validate_fields({**base, **overrides}, SamplingFields, prefix=f"stage_sampling.{stage}")
        sampling = fields.sampling_params(
            overrides.get("max_tokens") if overrides and "max_tokens" in overrides
            else self.max_completion_tokens or self.max_tokens,
            self.logprobs, self.top_logprobs or 0,
        )
        counter = iter(range(len(audios or [])))
        messages = [_template_message(i, m, counter) for i, m in enumerate(self.messages)]
        if self.audios:
            last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
            if last_user is None:
                raise InvalidRequest("audios: there is no user message to attach the audio to", param="audios")
            message = messages[last_user]
            parts = message["content"] if isinstance(message["content"], list) else [
                {"type": "text", "text": message["content"]}]
            message["content"] = parts + [audio_part(next(counter)) for _ in self.audios]
        return OmniRequest(
            request_id=request_id,
            messages=messages,
            sampling={stage: sampling},
            audios=list(audios or []),
            route=[stage],
            emit=[stage],
        )


def _template_message(i: int, message: ChatMessage, audio_index: Iterator[int]) -> dict[str, Any]:
    """Flatten text parts into the plain string the chat template expects; a message with
    audio keeps its parts in order, the audio as placeholders the speech stage fills."""
    content = message.content
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            kind = part.get("type")
            if kind in AUDIO_PART_TYPES:
                parts.append(audio_part(next(audio_index)))
            elif kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            else:
                where = f"messages[{i}].content[{j}]"
                raise InvalidRequest(
                    f"{where}: content part type {kind!r} is not supported by this model; it takes text, "
                    "input_audio and audio_url parts",
                    param=where,
                )
        has_audio = any(p["type"] == "audio" for p in parts)
        content = parts if has_audio else "".join(p["text"] for p in parts)
    out: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role,
                           "content": content or ""}
    for key in ("name", "tool_call_id", "tool_calls"):
        value = getattr(message, key)
        if value is not None:
            out[key] = value
    return out
