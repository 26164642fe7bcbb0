"""Request models for `/v1/audio/*`: speech (JSON) and transcriptions and
translations (multipart forms)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from omniserve.api.protocol.common import TextStr

MAX_SPEECH_INPUT_CHARS = 4096

# OpenAI's voice names; each maps to the served model's default voice (see docs/audio.md).
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
                 "marin", "cedar")


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: TextStr = Field(max_length=MAX_SPEECH_INPUT_CHARS)
    voice: str | None = None
    instructions: str | None = None  # accepted; a Piper voice has no style control
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    stream_format: Literal["sse", "audio"] | None = None
    stream: bool = False  # vLLM-Omni: a chunked audio body, as stream_format="audio"
    # Piper's own knobs, for those who know them.
    noise_scale: float | None = Field(None, ge=0, le=2)
    noise_w_scale: float | None = Field(None, ge=0, le=2)

    @model_validator(mode="before")
    @classmethod
    def _voice_object(cls, data: Any) -> Any:
        """OpenAI also accepts `voice: {"id": ...}`."""
        if isinstance(data, dict) and isinstance(data.get("voice"), dict):
            data = {**data, "voice": data["voice"].get("id")}
        return data



class TranscriptionForm(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    language: str | None = Field(None, pattern=r"^[a-zA-Z]{2,3}([-_][a-zA-Z]{2,4})?$")
    prompt: str | None = None
    response_format: Literal["json", "text", "srt", "vtt", "verbose_json"] = "json"
    temperature: float = Field(0.0, ge=0, le=1)
    timestamp_granularities: list[Literal["segment", "word"]] = Field(default_factory=lambda: ["segment"])
    stream: bool = False
