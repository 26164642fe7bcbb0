"""SGLang Diffusion's LoRA API for a diffusers image model: `POST /v1/set_lora`,
`POST /v1/merge_lora_weights`, `POST /v1/unmerge_lora_weights`, `GET /v1/list_loras`.

Each call is a control call to the model's denoiser stage, which changes its
adapters between denoising steps. Adapter paths are read only from inside
`--lora-dir` (like media files: `..` and symlinks resolved, outside refused).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from omniserve.api.protocol.lora import LoraNameRequest, SetLoraRequest
from omniserve.api.protocol.models import DiffusionLoras
from omniserve.api.routes.common import get_client, model_response, read_json, resolve_model
from omniserve.api.routes.lora import adapter_file
from omniserve.errors import InvalidRequest
from omniserve.runtime.client import ServedModel
from omniserve.runtime.messages import ControlOp, ListAdapters, MergeAdapters, SetAdapters

router = APIRouter()
DENOISER_TARGETS = ("all", "unet", "transformer", "denoiser")


def _listed(value: Any, count: int, field: str) -> list[Any]:
    values = value if isinstance(value, list) else [value] * count
    if len(values) != count:
        raise InvalidRequest(f"{field}: give one value or one per lora_nickname ({count})", param=field)
    return values


def _lora_model(request: Request, model_id: str | None) -> ServedModel:
    """The image model a LoRA call names, checked to take adapters."""
    model = resolve_model(get_client(request), model_id, "image")
    if not model.facts.lora or model.lora_stage is None:
        raise InvalidRequest(f"model `{model.id}` cannot take LoRA adapters", param="model")
    return model


async def _run(request: Request, model: ServedModel, op: ControlOp) -> Response:
    adapters = await get_client(request).control(model.lora_stage, op)
    return model_response(DiffusionLoras.model_validate(adapters))


@router.post("/v1/set_lora")
async def set_lora(request: Request):
    body = await read_json(request, SetLoraRequest)
    model = _lora_model(request, body.model)
    nicknames = body.lora_nickname if isinstance(body.lora_nickname, list) else [body.lora_nickname]
    if not nicknames or not all(n.strip() for n in nicknames):
        raise InvalidRequest("lora_nickname: give a name for each adapter", param="lora_nickname")
    targets = _listed(body.target, len(nicknames), "target")
    bad = [t for t in targets if t not in DENOISER_TARGETS]
    if bad:
        raise InvalidRequest(f"target: {bad[0]!r} is not supported; adapters go to the denoiser "
                             f"({', '.join(DENOISER_TARGETS)})", param="target")
    paths = []
    for path in _listed(body.lora_path, len(nicknames), "lora_path"):
        if path is None:
            raise InvalidRequest("lora_path: give the adapter's path (inside --lora-dir)", param="lora_path")
        paths.append(adapter_file(request, path))
    op = SetAdapters(nicknames, paths, _listed(body.strength, len(nicknames), "strength"))
    return await _run(request, model, op)


@router.post("/v1/merge_lora_weights")
async def merge_lora(request: Request):
    body = await read_json(request, LoraNameRequest, empty_ok=True)
    return await _run(request, _lora_model(request, body.model), MergeAdapters(merge=True))


@router.post("/v1/unmerge_lora_weights")
async def unmerge_lora(request: Request):
    body = await read_json(request, LoraNameRequest, empty_ok=True)
    return await _run(request, _lora_model(request, body.model), MergeAdapters(merge=False))


@router.get("/v1/list_loras")
async def list_loras(request: Request, model: str | None = None):
    return await _run(request, _lora_model(request, model), ListAdapters())
