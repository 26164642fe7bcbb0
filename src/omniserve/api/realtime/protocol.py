"""Realtime API events as pydantic models: what a client sends (parsed, each failure an `error` event
naming the offending `event_id`), and what the server sends. The session settings accept GA's nested
shape (`audio.input.format`, `audio.output.voice`, `output_modalities`) and beta's flat one
(`input_audio_format`, `voice`, `modalities`)."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from omniserve.media.pcm import FORMATS
from omniserve.validation import first_error


def new_event_id() -> str:
    return f"event_{uuid.uuid4().hex[:20]}"


class RealtimeError(Exception):
    """A client event the session cannot take: an `error` event, and the session goes on."""

    def __init__(self, message: str, code: str = "invalid_request_error", param: str | None = None,
                 event_id: str | None = None):
        super().__init__(message)
        self.message, self.code, self.param, self.event_id = message, code, param, event_id


# ---- session settings ------------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields a later step may use; unknown ones are left


class AudioFormatSpec(_Open):
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: Literal[24000] | None = None  # pcm16 is 24 kHz only, as at OpenAI


class TurnDetectionSpec(_Open):
    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(300, ge=0, le=10_000)
    silence_duration_ms: int = Field(500, ge=0, le=10_000)
    create_response: bool = True
    interrupt_response: bool = True


class AudioInputSpec(_Open):
    format: AudioFormatSpec | None = None
    turn_detection: TurnDetectionSpec | None = None


class AudioOutputSpec(_Open):
    format: AudioFormatSpec | None = None
    voice: str | None = None


class AudioSpec(_Open):
    input: AudioInputSpec | None = None
    output: AudioOutputSpec | None = None


class SessionSpec(_Open):
    """`session.update`'s `session`: only the fields it sets change."""

    instructions: str | None = None
    output_modalities: list[Literal["text", "audio"]] | None = None
    modalities: list[Literal["text", "audio"]] | None = None  # beta
    audio: AudioSpec | None = None
    voice: str | None = None  # beta
    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None  # beta
    output_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None  # beta
    turn_detection: TurnDetectionSpec | None = None  # beta (and GA inside audio.input)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_output_tokens: int | Literal["inf"] | None = None
    max_response_output_tokens: int | Literal["inf"] | None = None  # beta


# ---- client events ---------------------------------------------------------------------------------


class ClientEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    event_id: str | None = None


class SessionUpdate(ClientEvent):
    type: Literal["session.update"]
    session: SessionSpec


class InputAudioAppend(ClientEvent):
    type: Literal["input_audio_buffer.append"]
    audio: str  # base64 of the session's input format


class InputAudioCommit(ClientEvent):
    type: Literal["input_audio_buffer.commit"]


class InputAudioClear(ClientEvent):
    type: Literal["input_audio_buffer.clear"]


CLIENT_EVENTS: dict[str, type[ClientEvent]] = {
    "session.update": SessionUpdate,
    "input_audio_buffer.append": InputAudioAppend,
    "input_audio_buffer.commit": InputAudioCommit,
    "input_audio_buffer.clear": InputAudioClear,
}


def parse_client_event(data: Any) -> ClientEvent:
    """A client event, or a `RealtimeError` naming what is wrong (and its event_id, when it has one)."""
    if not isinstance(data, dict):
        raise RealtimeError("an event must be a JSON object with a `type`", param="type")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    kind = data.get("type")
    model = CLIENT_EVENTS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise RealtimeError(f"unknown event type {kind!r}; this server takes: {', '.join(CLIENT_EVENTS)}",
                            param="type", event_id=event_id)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        loc, message = first_error(exc)
        where = ".".join(map(str, loc))
        raise RealtimeError(f"{kind}: {where}: {message}", param=where, event_id=event_id) from None


# ---- server events ---------------------------------------------------------------------------------


class ServerEvent(BaseModel):
    type: str
    event_id: str = Field(default_factory=new_event_id)


class TurnDetectionOut(BaseModel):
    type: Literal["server_vad"] = "server_vad"
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int
    create_response: bool
    interrupt_response: bool


class FormatOut(BaseModel):
    type: str
    rate: int


class AudioInputOut(BaseModel):
    format: FormatOut
    turn_detection: TurnDetectionOut | None
    transcription: dict[str, Any] | None = None


class AudioOutputOut(BaseModel):
    format: FormatOut
    voice: str
    speed: float = 1.0


class AudioOut(BaseModel):
    input: AudioInputOut
    output: AudioOutputOut


class SessionOut(BaseModel):
    """The session as GA's `session.created` / `session.updated` show it."""

    type: Literal["realtime"] = "realtime"
    object: Literal["realtime.session"] = "realtime.session"
    id: str
    model: str
    output_modalities: list[str]
    instructions: str
    audio: AudioOut
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: str = "auto"
    temperature: float | None = None
    max_output_tokens: int | Literal["inf"] = "inf"


class SessionEvent(ServerEvent):
    session: SessionOut


class SpeechStartedEvent(ServerEvent):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


class SpeechStoppedEvent(ServerEvent):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class CommittedEvent(ServerEvent):
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    previous_item_id: str | None
    item_id: str


class ClearedEvent(ServerEvent):
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class ErrorDetail(BaseModel):
    type: str
    code: str | None
    message: str
    param: str | None
    event_id: str | None


class ErrorEvent(ServerEvent):
    type: Literal["error"] = "error"
    error: ErrorDetail

    @classmethod
    def of(cls, exc: RealtimeError) -> ErrorEvent:
        return cls(error=ErrorDetail(type="invalid_request_error", code=exc.code, message=exc.message,
                                     param=exc.param, event_id=exc.event_id))


def audio_format(spec: AudioFormatSpec | str):
    """A `PcmFormat` from GA's `{"type": ...}` or beta's name."""
    return FORMATS[spec if isinstance(spec, str) else spec.type]
