"""Realtime API events as pydantic models: what a client sends (parsed, each failure an `error` event
naming the offending `event_id`), and what the server sends. The session settings accept GA's nested
shape (`audio.input.format`, `audio.output.voice`, `output_modalities`) and beta's flat one
(`input_audio_format`, `voice`, `modalities`)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from omniserve.api.protocol.common import omitted
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
    # sglang-omni's per-stage sampling (an omniserve extension, as in chat): {"talker": {"temperature": 0}}
    stage_sampling: dict[str, dict[str, Any]] | None = None


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
    tools: list[ToolSpec] = Field(default_factory=list)
    tool_choice: ToolChoice = "auto"
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


# ---- conversation items ----------------------------------------------------------------------------


class ContentPart(BaseModel):
    type: str  # input_text, input_audio, input_image, output_text, output_audio
    text: str | None = omitted()
    transcript: str | None = omitted()
    image_url: str | None = omitted()


class Item(BaseModel):
    """A conversation item as the server shows it (audio stays on the server: events never echo it)."""

    id: str
    object: Literal["realtime.item"] = "realtime.item"
    type: Literal["message", "function_call", "function_call_output"]
    status: Literal["completed", "incomplete", "in_progress"] = "completed"
    role: Literal["user", "assistant", "system"] | None = omitted()
    content: list[ContentPart] | None = omitted()
    call_id: str | None = omitted()
    name: str | None = omitted()
    arguments: str | None = omitted()
    output: str | None = omitted()


class ItemEvent(ServerEvent):
    """conversation.item.added / .done / .retrieved (beta: .created)."""

    previous_item_id: str | None = None
    item: Item


class ItemDeletedEvent(ServerEvent):
    type: Literal["conversation.item.deleted"] = "conversation.item.deleted"
    item_id: str


class ItemTruncatedEvent(ServerEvent):
    type: Literal["conversation.item.truncated"] = "conversation.item.truncated"
    item_id: str
    content_index: int
    audio_end_ms: int


class TranscriptionDeltaEvent(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.delta"] = (
        "conversation.item.input_audio_transcription.delta")
    item_id: str
    content_index: int = 0
    delta: str


class TranscriptionCompletedEvent(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed")
    item_id: str
    content_index: int = 0
    transcript: str
    usage: dict[str, Any]


class TranscriptionFailedEvent(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.failed"] = (
        "conversation.item.input_audio_transcription.failed")
    item_id: str
    content_index: int = 0
    error: dict[str, Any]


# ---- responses -------------------------------------------------------------------------------------


class TokenDetails(BaseModel):
    text_tokens: int = 0
    audio_tokens: int = 0
    cached_tokens: int | None = omitted()


class ResponseUsage(BaseModel):
    total_tokens: int
    input_tokens: int
    output_tokens: int
    input_token_details: TokenDetails
    output_token_details: TokenDetails


class ResponseOut(BaseModel):
    object: Literal["realtime.response"] = "realtime.response"
    id: str
    status: Literal["in_progress", "completed", "cancelled", "failed", "incomplete"] = "in_progress"
    status_details: dict[str, Any] | None = None
    output: list[Item] = Field(default_factory=list)
    conversation_id: str | None = None
    output_modalities: list[str]
    max_output_tokens: int | Literal["inf"] = "inf"
    audio: dict[str, Any] | None = None
    usage: ResponseUsage | None = None
    metadata: dict[str, str] | None = None


class ResponseEvent(ServerEvent):
    """response.created / response.done."""

    response: ResponseOut


class OutputItemEvent(ServerEvent):
    """response.output_item.added / .done."""

    response_id: str
    output_index: int
    item: Item


class _InPart(ServerEvent):
    response_id: str
    item_id: str
    output_index: int
    content_index: int


class ContentPartEvent(_InPart):
    """response.content_part.added / .done."""

    part: ContentPart


class DeltaEvent(_InPart):
    """response.output_audio.delta (base64 audio), .output_audio_transcript.delta, .output_text.delta."""

    delta: str


class AudioDoneEvent(_InPart):
    type: Literal["response.output_audio.done"] = "response.output_audio.done"


class TranscriptDoneEvent(_InPart):
    type: Literal["response.output_audio_transcript.done"] = "response.output_audio_transcript.done"
    transcript: str


class TextDoneEvent(_InPart):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    text: str


class ArgumentsDeltaEvent(ServerEvent):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    delta: str


class ArgumentsDoneEvent(ServerEvent):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    response_id: str
    item_id: str
    output_index: int
    call_id: str
    name: str
    arguments: str


# GA's event names, as the beta API spelled them (a beta client says so with `OpenAI-Beta: realtime=v1`);
# None: the beta API had no such event
BETA_NAMES: dict[str, str | None] = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
    "conversation.item.done": None,
}


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
