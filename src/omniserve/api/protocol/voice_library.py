"""Request and response models for the voice library: OpenAI's voice consents and custom voices
(`/v1/audio/voice_consents`, `/v1/audio/voices`), and vLLM-Omni's upload (`/v1/audio/voice/upload`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from omniserve.api.protocol.common import TextStr

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # OpenAI's limit for a consent recording or a voice sample
# Seconds of audio: a consent must hold the statement (about 6 s); a sample enough speech to clone from.
CONSENT_SECONDS = (2.0, 30.0)
SAMPLE_SECONDS = (3.0, 60.0)


class _Form(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ConsentForm(_Form):
    name: TextStr = Field(max_length=256)
    language: str = Field(pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$", description="BCP 47, e.g. en-US")


class ConsentUpload(ConsentForm):
    """The multipart form as /openapi.json shows it."""

    recording: bytes = Field(description="the person saying the consent statement: mp3, wav, ogg, aac, flac, webm, "
                                         "mp4 (anything FFmpeg decodes), at most 10 MiB, 2-30 s")


class ConsentRename(_Form):
    model_config = ConfigDict(extra="forbid")

    name: TextStr = Field(max_length=256)


class VoiceForm(_Form):
    name: TextStr = Field(max_length=256, pattern=r"^[^+()]*$")  # not a blend
    consent: str = Field(min_length=1, max_length=64)
    ref_text: str | None = Field(None, max_length=4096, description="what the sample says (default: transcribed)")


class VoiceUpload(VoiceForm):
    audio_sample: bytes = Field(description="the voice to clone: mp3, wav, ogg, aac, flac, webm, mp4, at most 10 MiB, "
                                            "3-60 s, by the speaker of the consent recording")


# ---- responses ---------------------------------------------------------------------------------------------

class VoiceConsent(BaseModel):
    object: Literal["audio.voice_consent"]
    id: str
    name: str
    language: str
    created_at: int


class VoiceConsentList(BaseModel):
    object: Literal["list"]
    data: list[VoiceConsent]
    first_id: str | None
    last_id: str | None
    has_more: bool


class VoiceConsentDeleted(BaseModel):
    id: str
    object: Literal["audio.voice_consent"]
    deleted: bool


class CustomVoice(BaseModel):
    object: Literal["audio.voice"]
    id: str
    name: str
    created_at: int


class CustomVoiceDeleted(BaseModel):
    id: str
    object: Literal["audio.voice"]
    deleted: bool


class UploadedVoice(BaseModel):
    id: str
    name: str
    consent: str
    created_at: int
    file_size: int
    ref_text: str


class VoiceUploaded(BaseModel):
    """vLLM-Omni's answer to an upload."""

    success: Literal[True]
    voice: UploadedVoice
