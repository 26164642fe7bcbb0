"""Request model for `POST /v1/images/generations` (OpenAI, with SGLang Diffusion's extensions)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from omniserve.api.protocol.common import NonBlankStr, merge_extra_body
from omniserve.media.image_out import QUALITY_PRESETS

DEFAULT_SIZE = (512, 512)
MAX_SIDE = 4096  # whatever --max-generated-image-size says


def parse_size(size: str | None, param: str = "size") -> tuple[int, int]:
    """`WxH` (or `auto`) -> (width, height); a ValueError names what is wrong."""
    if size in (None, "auto"):
        return DEFAULT_SIZE
    match = re.fullmatch(r"(\d{1,5})[xX*](\d{1,5})", size.strip())
    if not match:
        raise ValueError(f"{param}: {size!r} is not a size; use WIDTHxHEIGHT, e.g. 512x512, or auto")
    width, height = int(match.group(1)), int(match.group(2))
    if not (16 <= width <= MAX_SIDE and 16 <= height <= MAX_SIDE):
        raise ValueError(f"{param}: each side must be 16 to {MAX_SIDE} pixels; got {width}x{height}")
    return width, height


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: NonBlankStr = Field(max_length=32000)
    n: int = Field(1, ge=1, le=10)
    size: str | None = None
    response_format: Literal["b64_json", "url"] = "b64_json"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int | None = Field(None, ge=0, le=100)
    quality: Literal[tuple(QUALITY_PRESETS)] | None = None  # type: ignore[valid-type]
    background: Literal["transparent", "opaque", "auto"] = "auto"
    style: str | None = None
    user: str | None = None
    # SGLang Diffusion / vLLM-Omni extensions
    seed: int | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = Field(None, ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=0, le=100)
    height: int | None = Field(None, ge=16, le=MAX_SIDE)
    width: int | None = Field(None, ge=16, le=MAX_SIDE)

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        parse_size(value)
        return value

    def dimensions(self) -> tuple[int, int]:
        """`width`/`height` win over `size`."""
        width, height = parse_size(self.size)
        return self.width or width, self.height or height



class ImageChatFields(BaseModel):
    """What a chat request to an image model may set besides its messages (from the body or
    `extra_body`), as vLLM-Omni takes them."""

    model_config = ConfigDict(extra="ignore")

    n: int | None = None
    size: str | None = None
    height: int | None = None
    width: int | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    output_format: str | None = None
    background: str | None = None

    _merge_extra_body = model_validator(mode="before")(classmethod(lambda cls, data: merge_extra_body(data)))
