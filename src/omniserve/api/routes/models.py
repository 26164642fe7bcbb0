"""`GET /v1/models` and `GET /v1/models/{id}`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from omniserve.api.protocol.models import ModelCard, ModelList
from omniserve.api.routes.common import get_client, model_response, resolve_model
from omniserve.runtime.client import Client, ServedModel

router = APIRouter()


def model_card(m: ServedModel) -> ModelCard:
    return ModelCard(id=m.id, object="model", created=m.created, owned_by=m.owned_by, root=m.root, parent=None,
                     type=m.kind, max_model_len=m.max_model_len, aliases=list(m.aliases) or None,
                     output_modalities=(["image", "video"] if m.facts.videos else ["image"])
                     if m.kind == "image" else None)


def adapter_cards(client: Client) -> list[ModelCard]:
    """The chat model's LoRA adapters, each as `base:adapter` (how a request names it)."""
    base = next((m for m in client.served_models if m.kind == "chat"), None)
    return [model_card(base).model_copy(update={"id": f"{base.id}:{name}", "root": path, "parent": base.id})
            for name, path in client.loras.items()] if base else []


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    client = get_client(request)
    # one card per id: an omni checkpoint chats and speaks under one name, and lists as its chat model
    unique = {m.id: m for m in reversed(client.served_models)}
    cards = [model_card(m) for m in client.served_models if unique[m.id] is m]
    return model_response(ModelList(object="list", data=cards + adapter_cards(client)))


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> Response:
    return model_response(model_card(resolve_model(get_client(request), model_id, kind=None)))
