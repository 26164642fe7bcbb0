"""LoRA adapters for the chat model (SGLang's and vLLM's API): `POST /v1/load_lora_adapter`
and `POST /v1/unload_lora_adapter`. Each call is a request to the thinker stage, which loads
or frees the GGUF adapter between steps; requests then name it with `model: "base:adapter"`
or `lora_path`. Paths are read only from inside `--lora-dir`, like diffusion adapters."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from omniserve.api.protocol.common import parse_body
from omniserve.api.protocol.lora import LoadLoraRequest, UnloadLoraRequest
from omniserve.api.routes.common import get_client, new_id, resolve_model, start, until_disconnect
from omniserve.errors import InvalidRequest
from omniserve.media.inputs import inside
from omniserve.runtime.types import OmniRequest

router = APIRouter()


def adapter_file(request: Request, path: str) -> str:
    """An adapter's path, resolved inside `--lora-dir` (default `<data-dir>/loras`), or a 400."""
    settings = request.app.state.settings
    resolved = inside(settings.lora_dir or settings.data_dir / "loras", path)
    if resolved is None or not resolved.exists():
        raise InvalidRequest(f"lora_path: no adapter at {path!r} inside the LoRA folder (--lora-dir)",
                             param="lora_path")
    return str(resolved)


async def _run(request: Request, op: dict) -> JSONResponse:
    client = get_client(request)
    stage = resolve_model(client, None).stage
    omni = OmniRequest(new_id("lora"), route=[stage], emit=[stage], params={stage: {"lora_op": op}})
    _, stream = await start(request, client, omni)
    outputs = await until_disconnect(request, _collect(stream))
    client.loras = next(o.info["loras"] for o in outputs if "loras" in o.info)
    return JSONResponse({"success": True, "error_message": "", "loaded_adapters": client.loras})


async def _collect(stream) -> list:
    return [out async for out in stream]


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(request: Request):
    body = parse_body(await request.body(), LoadLoraRequest)
    return await _run(request, {"op": "load", "name": body.lora_name, "path": adapter_file(request, body.lora_path)})


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(request: Request):
    body = parse_body(await request.body(), UnloadLoraRequest)
    return await _run(request, {"op": "unload", "name": body.lora_name})
