"""`POST /v1/images/generations`, `POST /v1/images/edits` (multipart or JSON) and
`GET /v1/images/{id}/content`: validate -> OmniRequest routed to the image
stage -> encoded images, inline (`b64_json`) or stored for a while and
linked (`url`). Chat with an image model (vLLM-Omni's universal endpoint)
goes through `generate` too."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from omniserve.api.media import decode_uploaded_image, load_image
from omniserve.api.protocol.common import validate_fields
from omniserve.api.protocol.images import (
    MAX_EDIT_IMAGES,
    ImageData,
    ImageEditRequest,
    ImageGenerationRequest,
    ImageInputTokensDetails,
    ImageModelInfo,
    ImageModelStage,
    ImagesResponse,
    ImageUsage,
)
from omniserve.api.routes.common import (
    get_client,
    is_json,
    model_response,
    new_id,
    now,
    open_file_response,
    public_url,
    read_json,
    resolve_model,
    start,
    together,
    until_disconnect,
)
from omniserve.errors import InvalidRequest, NotFound, UnsupportedMediaType
from omniserve.media.image_out import ImageStore, encode_image, encoding_quality
from omniserve.runtime.client import ServedModel
from omniserve.runtime.types import GeneratedImage, OmniOutput, OmniRequest

router = APIRouter()


def image_store(request: Request) -> ImageStore:
    settings = request.app.state.settings
    return ImageStore(settings.data_dir / "images", settings.image_ttl_seconds)


async def generate(request: Request, model: ServedModel, body: ImageGenerationRequest, size: tuple[int, int],
                   images: list[np.ndarray] | None = None, **extra: Any) -> list[OmniOutput]:
    """Run one image request through the model's stage; the outputs in order, one per image."""
    width, height = size
    limit = request.app.state.settings.max_generated_image_size
    if limit and max(width, height) > limit:
        raise InvalidRequest(f"size: {width}x{height} is larger than this server allows ({limit} pixels a side, "
                             "--max-generated-image-size)", param="size")
    if body.background == "transparent" and body.output_format == "jpeg":
        raise InvalidRequest("background: a transparent image needs output_format png or webp", param="background")
    params = {"n": body.n, "width": width, "height": height, "seed": body.seed,
              "transparent": body.background == "transparent", "negative_prompt": body.negative_prompt,
              "num_inference_steps": body.num_inference_steps, "guidance_scale": body.guidance_scale, **extra}
    stage_params = {k: v for k, v in params.items() if v is not None}
    omni = OmniRequest(new_id("img"), prompt=body.prompt, images=images or [], entry=model.entry,
                       output_modalities=["image"],
                       params={stage: stage_params for stage in model.path})
    _, stream = await start(request, get_client(request), omni)
    outputs = await until_disconnect(request, _collect(stream))
    return sorted(outputs, key=lambda o: o.index)


async def _collect(stream) -> list[OmniOutput]:
    return [out async for out in stream if isinstance(out.data, GeneratedImage)]


async def encoded(body: ImageGenerationRequest, outputs: list[OmniOutput]) -> list[bytes]:
    quality = encoding_quality(body.quality, body.output_compression)
    return [await asyncio.to_thread(encode_image, out.data.image, body.output_format, quality) for out in outputs]


async def images_response(request: Request, body: ImageGenerationRequest, outputs: list[OmniOutput]) -> Response:
    store = image_store(request)
    data = []
    for out, blob in zip(outputs, await encoded(body, outputs), strict=True):
        if body.response_format == "url":
            with request.app.state.data.writing("the image", store.folder):
                image_id = await asyncio.to_thread(store.save, blob, body.output_format)
            url = public_url(request, request.app.url_path_for("image_content", image_id=image_id))
            data.append(ImageData(url=url, revised_prompt=out.data.revised_prompt))
        else:
            data.append(ImageData(b64_json=base64.b64encode(blob).decode(), revised_prompt=out.data.revised_prompt))
    height, width = outputs[0].data.image.shape[:2]
    words = len(body.prompt.split())
    return model_response(ImagesResponse(
        created=now(), data=data, background="transparent" if body.background == "transparent" else "opaque",
        output_format=body.output_format, size=f"{width}x{height}", quality=body.quality or "auto",
        usage=ImageUsage(input_tokens=words, output_tokens=0, total_tokens=words,
                         input_tokens_details=ImageInputTokensDetails(text_tokens=words, image_tokens=0))))


@router.post("/v1/images/generations")
async def create_images(request: Request):
    body = await read_json(request, ImageGenerationRequest)
    model = resolve_model(get_client(request), body.model, "image")
    return await images_response(request, body, await generate(request, model, body, body.dimensions()))


@router.post("/v1/images/edits")
async def edit_images(request: Request):
    """Each input image is edited in turn: `data` holds `n` results per image, in order. The mask's
    transparent area is where the prompt is drawn; it applies to every image."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        body, images, mask = await _edit_upload(request)
    elif is_json(request):
        body, images, mask = await _edit_json(request)
    else:
        raise UnsupportedMediaType("an edit is a multipart/form-data upload (image or image[], prompt, optionally "
                                   'mask) or JSON ({"images": [{"image_url": ...}], "prompt": ..., "mask": '
                                   '{"image_url": ...}})')
    model = resolve_model(get_client(request), body.model, "image")
    if not model.facts.edits:
        raise InvalidRequest(f"model `{model.id}` cannot edit images", param="model")
    for i, image in enumerate(images):
        if mask is not None and mask.shape[:2] != image.shape[:2]:
            raise InvalidRequest(f"mask: the mask is {mask.shape[1]}x{mask.shape[0]} but image {i} is "
                                 f"{image.shape[1]}x{image.shape[0]}; they must be the same size", param="mask")
    custom_size = body.dimensions() if body.size or body.width or body.height else None
    results = await together([
        generate(request, model, body, custom_size or (image.shape[1], image.shape[0]),
                 [image] + ([mask] if mask is not None else []), edit=True, mask=mask is not None)
        for image in images])
    return await images_response(request, body, [out for outputs in results for out in outputs])


async def _edit_upload(request: Request) -> tuple[ImageGenerationRequest, list[np.ndarray], np.ndarray | None]:
    form = await request.form()
    uploads = [v for k in ("image", "image[]") for v in form.getlist(k) if isinstance(v, UploadFile)]
    if not uploads:
        raise InvalidRequest("image: upload the image to edit as a file field named image (or several as image[])",
                             param="image")
    if len(uploads) > MAX_EDIT_IMAGES:
        raise InvalidRequest(f"image: at most {MAX_EDIT_IMAGES} images per edit; got {len(uploads)}", param="image")
    body = validate_fields({k: v for k, v in form.multi_items() if isinstance(v, str)}, ImageGenerationRequest)
    where = "image" if len(uploads) == 1 else "image[{}]"
    images = [await decode_uploaded_image(request, u, where.format(i)) for i, u in enumerate(uploads)]
    mask = form.get("mask")
    return body, images, (await decode_uploaded_image(request, mask, "mask", alpha=True)
                          if isinstance(mask, UploadFile) else None)


async def _edit_json(request: Request) -> tuple[ImageGenerationRequest, list[np.ndarray], np.ndarray | None]:
    body = await read_json(request, ImageEditRequest)
    images = await asyncio.gather(*(load_image(request, ref.image_url, f"images[{i}].image_url")
                                    for i, ref in enumerate(body.images)))
    mask = await load_image(request, body.mask.image_url, "mask.image_url", alpha=True) if body.mask else None
    return body, list(images), mask


@router.get("/models")
async def image_model_info(request: Request) -> Response:
    """SGLang Diffusion's model info: what the image model is, what it does, and its stages."""
    client = get_client(request)
    model = resolve_model(client, None, "image")
    facts = model.facts
    names = model.path
    stages = [ImageModelStage.model_validate(s) for s in client.model_info()["stages"] if s["name"] in names]
    return model_response(ImageModelInfo(
        id=model.id, model_path=facts.model_path, task_type=facts.task_type, tasks=facts.tasks or [],
        pipeline_name=facts.pipeline_name, pipeline_class=facts.pipeline_class, num_gpus=0, stages=stages))


@router.get("/v1/images/{image_id}/content", name="image_content")
async def image_content(request: Request, image_id: str):
    found = await asyncio.to_thread(image_store(request).open, image_id)
    if found is None:
        raise NotFound(f"no image {image_id!r}: it never existed or has expired (images stored for "
                       "response_format url are kept for --image-ttl-seconds)", param="image_id")
    return open_file_response(*found)
