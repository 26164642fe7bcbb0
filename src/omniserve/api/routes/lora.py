"""LoRA adapters for the chat model (SGLang's and vLLM's API): `POST /v1/load_lora_adapter`
and `POST /v1/unload_lora_adapter`. Each call is a control call to the thinker stage, which
loads or frees the GGUF adapter between steps; requests then name it with `model: "base:adapter"`
or `lora_path`. Paths are read only from inside `--lora-dir`, like diffusion adapters."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from omniserve.api.protocol.lora import LoadLoraRequest, UnloadLoraRequest
from omniserve.api.protocol.models import LoraAdapters
from omniserve.api.routes.common import get_client, model_response, read_json, resolve_model
from omniserve.errors import InvalidRequest, NotFound
from omniserve.media.inputs import inside
from omniserve.runtime.messages import LoadAdapter, UnloadAdapter

router = APIRouter()


def adapter_file(request: Request, path: str) -> str:
    """An adapter's path, resolved inside `--lora-dir` (default `<data-dir>/loras`), or a 400."""
    settings = request.app.state.settings
    resolved = inside(settings.lora_dir or settings.data_dir / "loras", path)
    if resolved is None:
        raise InvalidRequest(f"lora_path: {path!r} is not inside the LoRA folder (--lora-dir)", param="lora_path")
    if not resolved.exists():
        raise NotFound(f"lora_path: no adapter at {path!r} inside the LoRA folder (--lora-dir)", param="lora_path",
                       code="lora_not_found")
    return str(resolved)


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(request: Request):
    body = await read_json(request, LoadLoraRequest)
    return await _run(request, LoadAdapter(body.lora_name, adapter_file(request, body.lora_path)))


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(request: Request):
    body = await read_json(request, UnloadLoraRequest)
    return await _run(request, UnloadAdapter(body.lora_name))


async def _run(request: Request, op: LoadAdapter | UnloadAdapter) -> Response:
    client = get_client(request)
    client.loras = await client.control(resolve_model(client, None).stage, op)
    return model_response(LoraAdapters(success=True, error_message="", loaded_adapters=client.loras))
