"""`POST /v1/images/generations` and `GET /v1/images/{id}/content`: validate ->
OmniRequest routed to the image stage -> encoded images, inline (`b64_json`) or
stored for a while and linked (`url`)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from omniserve.api.protocol.common import parse_body
from omniserve.api.protocol.images import ImageGenerationRequest
from omniserve.api.routes.common import get_client, new_id, now, resolve_model, start, until_disconnect
from omniserve.errors import InvalidRequest, NotFound
from omniserve.media.image_out import ImageStore, encode_image, encoding_quality
from omniserve.runtime.types import OmniOutput, OmniRequest

router = APIRouter()


def image_store(request: Request) -> ImageStore:
    settings = request.app.state.settings
    return ImageStore(settings.data_dir / "images", settings.image_ttl_seconds)


@router.post("/v1/images/generations")
async def create_images(request: Request):
    body = parse_body(await request.body(), ImageGenerationRequest)
    client = get_client(request)
    model = resolve_model(client, body.model, "image")
    width, height = body.dimensions()
    limit = request.app.state.settings.max_generated_image_size
    if limit and max(width, height) > limit:
        raise InvalidRequest(f"size: {width}x{height} is larger than this server allows ({limit} pixels a side, "
                             "--max-generated-image-size)", param="size")
    if body.background == "transparent" and body.output_format == "jpeg":
        raise InvalidRequest("background: a transparent image needs output_format png or webp", param="background")
    params = {"n": body.n, "width": width, "height": height, "seed": body.seed,
              "transparent": body.background == "transparent", "negative_prompt": body.negative_prompt,
              "num_inference_steps": body.num_inference_steps, "guidance_scale": body.guidance_scale}
    omni = OmniRequest(new_id("img"), prompt=body.prompt, route=[model.stage], emit=[model.stage],
                       params={model.stage: {k: v for k, v in params.items() if v is not None}})
    _, stream = await start(client, omni)
    outputs: list[OmniOutput] = await until_disconnect(request, _collect(stream))
    quality = encoding_quality(body.quality, body.output_compression)
    store = image_store(request)
    data = []
    for out in sorted(outputs, key=lambda o: o.index):
        encoded = await asyncio.to_thread(encode_image, out.info["image"], body.output_format, quality)
        item: dict[str, Any] = {"revised_prompt": out.info.get("revised_prompt")}
        if body.response_format == "url":
            image_id = await asyncio.to_thread(store.save, encoded, body.output_format)
            item["url"] = str(request.url_for("image_content", image_id=image_id))
        else:
            item["b64_json"] = base64.b64encode(encoded).decode()
        data.append(item)
    words = len(body.prompt.split())
    return JSONResponse({
        "created": now(), "data": data, "background": "transparent" if body.background == "transparent" else "opaque",
        "output_format": body.output_format, "size": f"{width}x{height}", "quality": body.quality or "auto",
        "usage": {"input_tokens": words, "output_tokens": 0, "total_tokens": words,
                  "input_tokens_details": {"text_tokens": words, "image_tokens": 0}},
    })


async def _collect(stream) -> list[OmniOutput]:
    return [out async for out in stream if "image" in out.info]


@router.get("/v1/images/{image_id}/content", name="image_content")
async def image_content(request: Request, image_id: str):
    found = image_store(request).find(image_id)
    if found is None:
        raise NotFound(f"no image {image_id!r}: it never existed or has expired (images stored for "
                       "response_format url are kept for --image-ttl-seconds)", param="image_id")
    path, media_type = found
    return FileResponse(path, media_type=media_type)
