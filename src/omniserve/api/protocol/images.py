"""Request model for `POST /v1/images/generations` (OpenAI, with SGLang Diffusion's extensions)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from omniserve.api.protocol.common import NonBlankStr, merge_extra_body, omitted
from omniserve.media.image_out import QUALITY_PRESETS
from omniserve.runtime.facts import ImageTask

DEFAULT_SIZE = (512, 512)
MAX_SIDE = 4096  # whatever --max-generated-image-size says
SIZE_PATTERN = r"^(auto|[1-9][0-9]{1,3}x[1-9][0-9]{1,3})$"  # the form; the sides' range is checked too
MAX_SEED = 2**32 - 1  # what every image stage's generator takes (numpy's RandomState the least)


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
    size: str | None = Field(None, json_schema_extra={"pattern": SIZE_PATTERN},
                             description="WIDTHxHEIGHT, each side 16 to 4096 (and at most --max-generated-image-size), "
                                         "or auto")
    response_format: Literal["b64_json", "url"] = "b64_json"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int | None = Field(None, ge=0, le=100)
    quality: Literal[tuple(QUALITY_PRESETS)] | None = None  # type: ignore[valid-type]
    background: Literal["transparent", "opaque", "auto"] = "auto"
    style: str | None = None
    user: str | None = None
    # SGLang Diffusion / vLLM-Omni extensions
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="the same seed, prompt and settings give the "
                             "same image")
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



class ImageReference(BaseModel):
    """An input image of a JSON edit: `{"image_url": URL or data URL}` (OpenAI's `file_id` needs a
    Files API this server does not have)."""

    model_config = ConfigDict(extra="forbid")

    image_url: str = Field(min_length=1, description="a URL or a data URL")

    @model_validator(mode="before")
    @classmethod
    def _no_file_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "file_id" in data:
            raise ValueError("file_id: this server has no Files API; send the image as image_url (a URL or a "
                             "data URL)")
        return data


MAX_EDIT_IMAGES = 16


class ImageEditRequest(ImageGenerationRequest):
    """`POST /v1/images/edits` as JSON: the images (each edited in turn) and a mask by URL."""

    images: list[ImageReference] = Field(min_length=1, max_length=MAX_EDIT_IMAGES)
    mask: ImageReference | None = None


class ImageEditUpload(ImageGenerationRequest):
    """The multipart edit as /openapi.json shows it: the fields, the image(s) and the mask."""

    image: bytes | list[bytes] = Field(description="the image to edit (png, jpeg, webp, ...); or several as image[]")
    mask: bytes | None = Field(None, description="an RGBA png: the prompt is drawn where it is transparent")


# ---- responses ---------------------------------------------------------------------------------------

class ImageData(BaseModel):
    """One image: its bytes (`b64_json`) or where to fetch them (`url`), as `response_format` asked."""

    b64_json: str | None = omitted()
    url: str | None = omitted()
    revised_prompt: str | None = None


class ImageInputTokensDetails(BaseModel):
    text_tokens: int
    image_tokens: int


class ImageUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: ImageInputTokensDetails


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    background: Literal["transparent", "opaque"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    size: str | None = None
    quality: str | None = None
    usage: ImageUsage | None = None


class ImageModelStage(BaseModel):
    name: str
    executor: str
    healthy: bool


class ImageModelInfo(BaseModel):
    """SGLang Diffusion's `GET /models`: what the image model is, what it does, and its stages."""

    id: str
    model_path: str | None
    task_type: ImageTask | None
    tasks: list[ImageTask]
    pipeline_name: str | None
    pipeline_class: str | None
    num_gpus: int
    stages: list[ImageModelStage]


class ImageChatFields(BaseModel):
    """What a chat request to an image model may set besides its messages (from the body or
    `extra_body`), as vLLM-Omni takes them."""

    model_config = ConfigDict(extra="ignore")

    n: int | None = None
    size: str | None = None
    height: int | None = None
    width: int | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    output_format: str | None = None
    background: str | None = None

    _merge_extra_body = model_validator(mode="before")(classmethod(lambda cls, data: merge_extra_body(data)))
