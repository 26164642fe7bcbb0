"""What a Realtime API client sends, as pydantic models: its events (parsed, each failure an `error` event
naming the offending `event_id`) and the settings and items in them. The session settings accept GA's
nested shape (`audio.input.format`, `audio.output.voice`, `output_modalities`) and beta's flat one
(`input_audio_format`, `voice`, `modalities`). What the server sends is in `events.py`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, model_serializer

from omniserve.api.protocol.audio import VoiceName
from omniserve.media.pcm import FORMATS
from omniserve.validation import first_error


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
    voice: VoiceName = None  # GA: a name or {"id": ...} (a custom voice)


class AudioSpec(_Open):
    input: AudioInputSpec | None = None
    output: AudioOutputSpec | None = None


class ToolSpec(_Open):
    """A function the model may call (the Realtime API's flat shape)."""

    type: Literal["function"] = "function"
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class FunctionChoice(_Open):
    type: Literal["function"]
    name: str


ToolChoice = Literal["auto", "none", "required"] | FunctionChoice


def _max_tokens(value: Any) -> int | str:
    if value == "inf" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096):
        return value
    raise ValueError(f'must be an integer from 1 to 4096, or "inf"; got {value!r}')


# an answer's length, as at OpenAI (one check, so that an error names the field and the range)
MaxTokens = Annotated[int | Literal["inf"], PlainValidator(_max_tokens)]


class TokenLimits(_Open):
    post_instructions: int | None = Field(None, ge=0)  # the conversation's tokens, past the instructions and tools


class RetentionRatio(_Open):
    """Past the limit, drop the oldest items until the conversation holds `retention_ratio` of it."""

    type: Literal["retention_ratio"]
    retention_ratio: float = Field(ge=0.0, le=1.0)
    token_limits: TokenLimits | None = None

    @model_serializer(mode="wrap")
    def _shown(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}  # as the client set it


Truncation = Literal["auto", "disabled"] | RetentionRatio


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
    max_output_tokens: MaxTokens | None = None
    max_response_output_tokens: MaxTokens | None = None  # beta
    tools: list[ToolSpec] | None = None
    tool_choice: ToolChoice | None = None
    truncation: Truncation | None = None
    # sglang-omni's per-stage sampling (an omniserve extension, as in chat): {"talker": {"temperature": 0}}
    stage_sampling: dict[str, dict[str, Any]] | None = None


class ClientSecretSession(SessionSpec):
    """The session a client secret opens (`POST /v1/realtime/client_secrets`)."""

    type: Literal["realtime"] = "realtime"
    model: str | None = None


class RealtimeCallUpload(BaseModel):
    """`POST /v1/realtime/calls` as a form (the spec's shape; the route reads the form itself)."""

    sdp: str = Field(description="the WebRTC offer (pc.createOffer()'s sdp)")
    session: str | None = Field(None, description="the session's settings, JSON as in POST /v1/realtime/"
                                "client_secrets (type realtime, model, instructions, audio, tools, ...)")


class ExpiresAfter(_Open):
    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(600, ge=10, le=7200)


class ClientSecretRequest(_Open):
    expires_after: ExpiresAfter = Field(default_factory=ExpiresAfter)
    session: ClientSecretSession = Field(default_factory=ClientSecretSession)


class ContentSpec(_Open):
    """A content part of an item the client adds (GA names, and beta's `text` and `audio`)."""

    type: Literal["input_text", "input_audio", "input_image", "output_text", "output_audio", "text", "audio"]
    text: str | None = None
    audio: str | None = None  # base64 in the session's input format
    transcript: str | None = None
    image_url: str | None = None


class ItemSpec(_Open):
    """`conversation.item.create`'s `item` (and `response.create`'s `input`)."""

    id: str | None = Field(None, max_length=64)
    type: Literal["message", "function_call", "function_call_output"]
    role: Literal["user", "assistant", "system"] | None = None
    content: list[ContentSpec] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None


class ResponseSpec(_Open):
    """`response.create`'s `response`: this response's settings over the session's."""

    output_modalities: list[Literal["text", "audio"]] | None = None
    modalities: list[Literal["text", "audio"]] | None = None  # beta
    instructions: str | None = None
    audio: AudioSpec | None = None
    voice: str | None = None  # beta
    output_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None  # beta
    tools: list[ToolSpec] | None = None
    tool_choice: ToolChoice | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_output_tokens: MaxTokens | None = None
    max_response_output_tokens: MaxTokens | None = None  # beta
    stage_sampling: dict[str, dict[str, Any]] | None = None
    conversation: Literal["auto", "none"] | None = None  # "none": out of band, the conversation is left alone
    input: list[ItemSpec] | None = None  # "none"'s context (else the conversation)
    metadata: dict[str, str] | None = None


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


class ItemCreate(ClientEvent):
    type: Literal["conversation.item.create"]
    previous_item_id: str | None = None  # None: at the end; "root": at the start
    item: ItemSpec


class ItemTruncate(ClientEvent):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


class ItemDelete(ClientEvent):
    type: Literal["conversation.item.delete"]
    item_id: str


class ItemRetrieve(ClientEvent):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ResponseCreate(ClientEvent):
    type: Literal["response.create"]
    response: ResponseSpec | None = None


class ResponseCancel(ClientEvent):
    type: Literal["response.cancel"]
    response_id: str | None = None


class OutputAudioClear(ClientEvent):
    """WebRTC only: stop the answer's audio that is still to play on the track."""

    type: Literal["output_audio_buffer.clear"]


CLIENT_EVENTS: dict[str, type[ClientEvent]] = {
    "session.update": SessionUpdate,
    "input_audio_buffer.append": InputAudioAppend,
    "input_audio_buffer.commit": InputAudioCommit,
    "input_audio_buffer.clear": InputAudioClear,
    "conversation.item.create": ItemCreate,
    "conversation.item.truncate": ItemTruncate,
    "conversation.item.delete": ItemDelete,
    "conversation.item.retrieve": ItemRetrieve,
    "response.create": ResponseCreate,
    "response.cancel": ResponseCancel,
    "output_audio_buffer.clear": OutputAudioClear,
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


def audio_format(spec: AudioFormatSpec | str):
    """A `PcmFormat` from GA's `{"type": ...}` or beta's name."""
    return FORMATS[spec if isinstance(spec, str) else spec.type]
