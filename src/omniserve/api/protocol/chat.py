"""`POST /v1/chat/completions` request model and its translation to OmniRequest."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from omniserve.api.protocol.audio import VoiceName
from omniserve.api.protocol.common import ResponseHead, SamplingFields, Usage, omitted, validate_fields
from omniserve.api.protocol.structured import GrammarSpec, check_choice
from omniserve.api.protocol.tools import Tool, forced_names, native_messages, plain_messages
from omniserve.errors import InvalidRequest
from omniserve.runtime.types import OmniRequest, TokenLogprob

# Content part type -> the kind of media it carries.
MEDIA_PART_TYPES = {"input_audio": "audio", "audio_url": "audio", "image_url": "image", "video_url": "video"}
# sglang-omni's top-level lists, attached to the last user message -> their kind.
TOP_LEVEL_MEDIA = {"images": "image", "videos": "video", "audios": "audio"}


class ContentPart(BaseModel):
    """One part of a message's content; its `type` says which other key holds the data."""

    model_config = ConfigDict(extra="allow")

    type: str


class FunctionCall(BaseModel):
    name: str
    arguments: str = "{}"  # JSON text, as the model wrote it


class ToolCall(BaseModel):
    """A call an earlier assistant turn made (OpenAI's `tool_calls` entries)."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None

    @property
    def parts(self) -> list[dict[str, Any]]:
        """The content parts as plain dicts ([] for text content)."""
        return [p.model_dump() for p in self.content] if isinstance(self.content, list) else []


class AudioOutput(BaseModel):
    """`audio: {voice, format}` for `modalities: ["text", "audio"]`."""

    voice: VoiceName = None
    format: Literal["wav", "mp3", "flac", "opus", "aac", "pcm16", "pcm"] = "wav"

    @property
    def voice_name(self) -> str | None:
        return self.voice

    @property
    def encoding(self) -> str:
        return "pcm" if self.format == "pcm16" else self.format


class ChatCompletionRequest(SamplingFields):
    # what `_check` below refuses, as the schema says it: a forced or required tool_choice needs tools, and
    # top_logprobs needs logprobs
    model_config = ConfigDict(json_schema_extra={"allOf": [
        {"if": {"required": ["tool_choice"], "properties": {"tool_choice": {"not": {"enum": ["none", "auto", None]}}}},
         "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}}},
        {"if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer", "minimum": 1}}},
         "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}},
    ]})

    messages: list[ChatMessage] = Field(min_length=1)
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None
    # sglang-omni: media for the last user message, after its own parts
    images: list[str | dict[str, Any]] | None = None
    videos: list[str | dict[str, Any]] | None = None
    audios: list[str | dict[str, Any]] | None = None
    video_fps: float = Field(1.0, gt=0, le=30, description="frames sampled per second of video")
    video_max_frames: int = Field(8, ge=1, le=64, description="most frames sampled from one video")
    use_audio_in_video: bool = True  # a video's sound goes to the speech stage (Qwen-Omni)
    stage_sampling: dict[str, dict[str, Any]] | None = None  # sglang-omni: sampling per stage name
    stage_params: dict[str, dict[str, Any]] | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise ValueError("tool_choice: give tools to choose from")
        return self

    @property
    def calls_tools(self) -> bool:
        """Whether the answer may hold tool calls (tools given, and tool_choice is not none)."""
        return bool(self.tools) and forced_names(self.tools, self.tool_choice) != []

    @property
    def wants_audio(self) -> bool:
        return bool(self.modalities and "audio" in self.modalities)

    def media_refs(self) -> list[tuple[str, str, Any]]:
        """Every media input in order as (where, kind, reference): message parts, then the
        top-level `images`, `videos` and `audios`."""
        refs = []
        for i, message in enumerate(self.messages):
            for j, part in enumerate(message.parts):
                kind = MEDIA_PART_TYPES.get(part.get("type"))
                if kind:
                    refs.append((f"messages[{i}].content[{j}]", kind, part.get(part["type"])))
        for field, kind in TOP_LEVEL_MEDIA.items():
            refs += [(f"{field}[{k}]", kind, ref) for k, ref in enumerate(getattr(self, field) or [])]
        return refs

    def per_stage(self) -> dict[str, dict[str, Any]]:
        """`stage_sampling` overlaid with `stage_params`, by stage name."""
        merged: dict[str, dict[str, Any]] = {}
        for source in (self.stage_sampling or {}, self.stage_params or {}):
            for stage, values in source.items():
                merged.setdefault(stage, {}).update(values)
        return merged

    def stage_fields(self, stage: str, overrides: dict[str, Any] | None) -> SamplingFields:
        """The sampling fields for an LLM `stage`: its `stage_sampling` laid over the top-level ones."""
        if not overrides:
            return self
        if "n" in overrides:
            raise InvalidRequest(f"stage_sampling.{stage}.n: set n at the top level (every stage answers n choices)",
                                 param=f"stage_sampling.{stage}.n")
        base = self.model_dump(include=set(SamplingFields.model_fields), exclude_none=True)
        return validate_fields({**base, **overrides}, SamplingFields, prefix=f"stage_sampling.{stage}", strict=True)

    def answer_grammar_spec(self, stage: str = "thinker", overrides: dict[str, Any] | None = None
                            ) -> GrammarSpec | None:
        """What the answer's grammar is built from: a forced tool call, or the response format, regex
        or ebnf (None: free text). The tools' parameter schemas must compile even when not forced."""
        spec = SamplingFields.grammar_spec(self.stage_fields(stage, overrides))
        tools = self.tools if self.calls_tools else []
        if not tools:
            return spec
        forced = forced_names(self.tools, self.tool_choice)
        spec = replace(spec or GrammarSpec(), tools=tuple(t.model_dump(exclude_none=True) for t in tools),
                       forced=tuple(forced) if forced else None, parallel=self.parallel_tool_calls)
        check_choice(spec)
        return spec

    def to_omni_request(self, request_id: str, media: dict[str, list[dict[str, Any]]] | None = None,
                        stage: str = "thinker", overrides: dict[str, Any] | None = None,
                        template_tools: bool = False) -> OmniRequest:
        """`media`: the placeholder parts each media reference became, by its `where` (see
        `media_refs`). `overrides`: this LLM stage's `stage_sampling`, laid over the top-level
        sampling fields. `template_tools`: the model's chat template renders tools itself.
        The output grammar is not set here: see `answer_grammar_spec`."""
        sampling = self.stage_fields(stage, overrides).sampling_params(
            overrides.get("max_tokens") if overrides and "max_tokens" in overrides
            else self.max_completion_tokens or self.max_tokens,
            self.logprobs, self.top_logprobs or 0,
        )
        media = media or {}
        messages = [_template_message(i, m, media) for i, m in enumerate(self.messages)]
        extra = [part for field in TOP_LEVEL_MEDIA for k in range(len(getattr(self, field) or []))
                 for part in media[f"{field}[{k}]"]]
        if extra:
            last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
            if last_user is None:
                field = next(f for f in TOP_LEVEL_MEDIA if getattr(self, f))
                raise InvalidRequest(f"{field}: there is no user message to attach the media to", param=field)
            message = messages[last_user]
            parts = message["content"] if isinstance(message["content"], list) else [
                {"type": "text", "text": message["content"]}]
            message["content"] = parts + extra
        tools = self.tools if self.calls_tools else []
        messages = native_messages(messages) if template_tools else plain_messages(messages, tools)
        return OmniRequest(
            request_id=request_id,
            messages=messages,
            sampling={stage: sampling},
            entry=stage,
            tools=[t.model_dump(exclude_none=True) for t in tools] if template_tools and tools else None,
        )


# ---- responses ---------------------------------------------------------------------------------------

class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobEntry(BaseModel):
    token: str
    logprob: float | None
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobEntry]
    refusal: None = None

    @classmethod
    def of(cls, items: list[TokenLogprob]) -> ChatLogprobs:
        return cls(content=[TokenLogprobEntry(token=lp.token, logprob=lp.logprob, bytes=lp.token_bytes,
                                              top_logprobs=[TopLogprob(token=t, logprob=v, bytes=b)
                                                            for t, v, b in lp.top]) for lp in items])


class AnswerAudio(BaseModel):
    id: str
    data: str  # base64 of the audio in the requested format
    expires_at: int | None = omitted()  # in a stream: with the last piece
    transcript: str


class AnswerMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | list[dict[str, Any]] | None  # a list of image_url parts from an image model
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = omitted()
    audio: AnswerAudio | None = omitted()


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class ChatChoice(BaseModel):
    index: int
    message: AnswerMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None


class ToolCallDelta(BaseModel):
    """A piece of a streamed tool call: its id and name first, then its arguments."""

    index: int
    id: str | None = omitted()
    type: Literal["function"] | None = omitted()
    function: dict[str, str]


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = omitted()
    content: str | None = omitted()
    tool_calls: list[ToolCallDelta] | None = omitted()
    audio: AnswerAudio | None = omitted()


class ChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletion(ResponseHead):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatCompletionChunk(ResponseHead):
    """One `data:` event of a streamed chat completion; the stream ends with `data: [DONE]`."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = omitted()  # only on the last chunk, with stream_options.include_usage


def _template_message(i: int, message: ChatMessage, media: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Flatten text parts into the plain string the chat template expects; a message with
    media keeps its parts in order, the media as placeholders the upstream stages fill."""
    content = message.content
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(message.parts):
            kind = part.get("type")
            where = f"messages[{i}].content[{j}]"
            if kind in MEDIA_PART_TYPES:
                parts += media[where]
            elif kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            else:
                raise InvalidRequest(
                    f"{where}: content part type {kind!r} is not supported; use text, image_url, video_url, "
                    "input_audio or audio_url",
                    param=where,
                )
        has_media = any(p["type"] != "text" for p in parts)
        content = parts if has_media else "".join(p["text"] for p in parts)
    out: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role,
                           "content": content or ""}
    for key in ("name", "tool_call_id"):
        value = getattr(message, key)
        if value is not None:
            out[key] = value
    if message.tool_calls is not None:
        out["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    return out
