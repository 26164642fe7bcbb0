"""What a Realtime API server sends, as pydantic models: the session as it stands, the conversation's
items, responses and their parts, errors, and the beta API's names for GA's events."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

from omniserve.api.protocol.common import omitted
from omniserve.api.realtime.protocol import RealtimeError, ToolChoice, ToolSpec, Truncation


def new_event_id() -> str:
    return f"event_{uuid.uuid4().hex[:20]}"


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
    truncation: Truncation = "auto"


class ClientSecretOut(BaseModel):
    """`POST /v1/realtime/client_secrets`' answer: the key, when it expires, and the session it opens."""

    value: str
    expires_at: int
    session: SessionOut


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


class OutputAudioBufferEvent(ServerEvent):
    """Over WebRTC, where the answer's audio goes out on the media track: when it began to play, when it has
    all played, and when it was cut off (`output_audio_buffer.clear`, or the user spoke over it)."""

    type: Literal["output_audio_buffer.started", "output_audio_buffer.stopped", "output_audio_buffer.cleared"]
    response_id: str


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
