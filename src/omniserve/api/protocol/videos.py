"""Request model for `POST /v1/videos` (OpenAI Videos, with SGLang Diffusion's extensions)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from omniserve.api.protocol.common import NonBlankStr, merge_extra_body
from omniserve.api.protocol.images import MAX_SEED, parse_size
from omniserve.media.image_out import QUALITY_PRESETS

MAX_SECONDS = 60


class VideoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: NonBlankStr = Field(max_length=32000)
    seconds: str = "4"
    size: str = "720x1280"
    fps: int = Field(8, ge=1, le=60)
    num_frames: int | None = Field(None, ge=1, le=3600)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    input_reference: str | dict[str, Any] | None = None  # JSON: a URL or {"image_url": ...}; multipart: a file
    quality: Literal[tuple(QUALITY_PRESETS)] | None = None  # type: ignore[valid-type]
    output_compression: int | None = Field(None, ge=0, le=100)
    negative_prompt: str | None = None
    num_inference_steps: int | None = Field(None, ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=0, le=100)

    _merge_extra_body = model_validator(mode="before")(classmethod(lambda cls, data: merge_extra_body(data)))

    @field_validator("seconds", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> str:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number of seconds; got {value!r}") from None
        if not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"must be more than 0 and at most {MAX_SECONDS}; got {value!r}")
        return f"{seconds:g}"

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        width, height = parse_size(value)
        if width % 2 or height % 2:
            raise ValueError(f"size: H.264 needs an even width and height; got {value!r}")
        return f"{width}x{height}"

    @model_validator(mode="after")
    def _seconds_from_frames(self) -> VideoRequest:
        """`num_frames` without `seconds`: the clip lasts num_frames / fps."""
        if self.num_frames and "seconds" not in self.model_fields_set:
            self.seconds = f"{self.num_frames / self.fps:g}"
        return self

    def frames(self) -> int:
        return self.num_frames or max(1, round(float(self.seconds) * self.fps))


class VideoUpload(VideoRequest):
    """The multipart form as /openapi.json shows it: the fields, and a reference image file."""

    input_reference: bytes | None = Field(None, description="an image the video starts from")  # type: ignore


# ---- responses ---------------------------------------------------------------------------------------

class Video(BaseModel):
    id: str
    object: Literal["video"]
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int
    created_at: int
    completed_at: int | None
    expires_at: int | None
    prompt: str | None
    size: str
    seconds: str
    remixed_from_video_id: str | None = None
    error: dict[str, Any] | None = None


class VideoList(BaseModel):
    object: Literal["list"]
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedVideo(BaseModel):
    id: str
    object: Literal["video.deleted"]
    deleted: bool
