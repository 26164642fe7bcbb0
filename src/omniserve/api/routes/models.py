"""`GET /v1/models` and `GET /v1/models/{id}`."""

from __future__ import annotations

from fastapi import APIRouter, Request

from omniserve.api.routes.common import get_client, resolve_model
from omniserve.runtime.client import ServedModel

router = APIRouter()


def model_card(m: ServedModel) -> dict:
    card = {
        "id": m.id,
        "object": "model",
        "created": m.created,
        "owned_by": m.owned_by,
        "root": m.root,
        "parent": None,
        "type": m.kind,
    }
    if m.max_model_len is not None:
        card["max_model_len"] = m.max_model_len
    if m.aliases:
        card["aliases"] = list(m.aliases)
    if m.kind == "image":  # what it makes: images, and videos when it can
        card["output_modalities"] = ["image", "video"] if m.info.get("videos") else ["image"]
    return card


def adapter_cards(client) -> list[dict]:
    """The chat model's LoRA adapters, each as `base:adapter` (how a request names it)."""
    base = next((m for m in client.served_models if m.kind == "chat"), None)
    return [{**model_card(base), "id": f"{base.id}:{name}", "root": path, "parent": base.id}
            for name, path in client.loras.items()] if base else []


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    client = get_client(request)
    # one card per id: an omni checkpoint chats and speaks under one name, and lists as its chat model
    unique = {m.id: m for m in reversed(client.served_models)}
    cards = [model_card(m) for m in client.served_models if unique[m.id] is m]
    return {"object": "list", "data": cards + adapter_cards(client)}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict:
    return model_card(resolve_model(get_client(request), model_id, kind=None))
