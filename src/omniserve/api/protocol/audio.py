"""Request models for `/v1/audio/*`: speech (JSON) and transcriptions and
translations (multipart forms)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from omniserve.api.protocol.common import TextStr, omitted

MAX_SPEECH_INPUT_CHARS = 4096



def voice_id(voice: dict[str, Any]) -> str:
    """OpenAI's `{"id": NAME}` voice object: its name."""
    name = voice.get("id")
    if not isinstance(name, str):
        raise ValueError('voice: give a voice name, or {"id": NAME}')
    return name


# A voice as OpenAI takes it: a name, or `{"id": ...}` (a custom voice's id, or any name).
VoiceName = Annotated[str | None, BeforeValidator(lambda v: voice_id(v) if isinstance(v, dict) else v)]


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: TextStr = Field(max_length=MAX_SPEECH_INPUT_CHARS)
    voice: VoiceName = None
    instructions: str | None = None  # accepted; Piper and Kokoro voices have no style control
    # vLLM-Omni's: the language to speak (a tag such as en-GB or fr, or a name); none or "auto": the voice's own
    language: str | None = Field(None, max_length=40)
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["sse", "audio"] | None = None
    stream: bool = False  # vLLM-Omni: a chunked audio body, as stream_format="audio"
    seed: int | None = Field(None, ge=0, lt=2**63)  # a voice that samples (an omni checkpoint's talker) repeats
    # Piper's own knobs, for those who know them.
    noise_scale: float | None = Field(None, ge=0, le=2)
    noise_w_scale: float | None = Field(None, ge=0, le=2)



class TranscriptionForm(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    # surrounding whitespace is dropped first: a pattern's `$` in the schema also matches before a final newline
    language: Annotated[str | None, BeforeValidator(lambda v: v.strip() if isinstance(v, str) else v)] = Field(
        None, pattern=r"^[a-zA-Z]{2,3}([-_][a-zA-Z]{2,4})?$")
    prompt: str | None = None
    response_format: Literal["json", "text", "srt", "vtt", "verbose_json"] = "json"
    temperature: float = Field(0.0, ge=0, le=1)
    timestamp_granularities: list[Literal["segment", "word"]] = Field(default_factory=lambda: ["segment"])
    stream: bool = False


class TranscriptionUpload(TranscriptionForm):
    """The multipart form as /openapi.json shows it: the fields, and the audio file."""

    file: bytes = Field(description="the audio: flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, opus, wav, webm, aac")


# ---- responses ---------------------------------------------------------------------------------------

class DurationUsage(BaseModel):
    type: Literal["duration"]
    seconds: float


class Transcription(BaseModel):
    """`response_format` json (text, srt and vtt are plain text)."""

    text: str
    usage: DurationUsage | None = None


class TranscriptionVerbose(Transcription):
    """`response_format` verbose_json."""

    task: Literal["transcribe", "translate"]
    language: str
    duration: float
    segments: list[dict[str, Any]] | None = omitted()  # with timestamp_granularities segment
    words: list[dict[str, Any]] | None = omitted()  # with timestamp_granularities word


class TranscriptEvent(BaseModel):
    """A streamed transcription's events: `transcript.text.delta` (delta), then `transcript.text.done`
    (text, usage)."""

    type: Literal["transcript.text.delta", "transcript.text.done"]
    delta: str | None = omitted()
    text: str | None = omitted()
    usage: DurationUsage | None = omitted()


class SpeechUsage(BaseModel):
    """Characters read, as OpenAI counts a speech request's input tokens."""

    input_tokens: int
    output_tokens: int
    total_tokens: int

    @staticmethod
    def of(characters: int) -> SpeechUsage:
        return SpeechUsage(input_tokens=characters, output_tokens=0, total_tokens=characters)


class SpeechEvent(BaseModel):
    """`stream_format: "sse"`: `speech.audio.delta` events (base64 audio), then `speech.audio.done`."""

    type: Literal["speech.audio.delta", "speech.audio.done"]
    audio: str | None = omitted()
    usage: SpeechUsage | None = omitted()


class SpeechChunkAudio(BaseModel):
    data: str  # base64 of a whole audio file in `format`
    format: str
    mime_type: str
    sample_rate: int


class SpeechChunk(BaseModel):
    """`stream: true` without stream_format (sglang-omni, vLLM-Omni): one self-contained file per event,
    then one with `finish_reason` and usage; the stream ends with `data: [DONE]`."""

    id: str
    object: Literal["audio.speech.chunk"]
    index: int
    audio: SpeechChunkAudio | None
    finish_reason: Literal["stop"] | None
    usage: SpeechUsage | None = omitted()


class Voice(BaseModel):
    id: str
    object: Literal["voice"]
    model: str
    sample_rate: int | None
    language: str | None  # BCP 47
    gender: Literal["female", "male"] | None
    default: bool
    aliases: list[str]  # the OpenAI names this model speaks with it


class CustomVoiceEntry(BaseModel):
    """A custom voice of the voice library, as the voices list shows it."""

    id: str
    object: Literal["audio.voice"]
    name: str
    created_at: int
    model: None
    language: str | None  # its consent's
    gender: None
    consent: str
    enabled: bool  # false once its consent is deleted


class VoiceList(BaseModel):
    object: Literal["list"]
    data: list[Voice | CustomVoiceEntry]
    voices: list[str]
