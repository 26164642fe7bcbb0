"""`POST /v1/embeddings`: validate -> OmniRequest to the embedding stage -> vectors, as floats
or base64 (little-endian float32, as OpenAI's SDK decodes them), cut to `dimensions` and
normalised again. Naming the chat model, or asking a server that serves no embedding model,
embeds with the chat GGUF itself (llama.cpp's embedding mode, in the thinker stage)."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from omniserve.api.protocol.embeddings import (
    OPENAI_EMBEDDING_NAMES,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
)
from omniserve.api.routes.common import (
    get_client,
    model_response,
    new_id,
    read_json,
    resolve_model,
    start,
    until_disconnect,
)
from omniserve.errors import InvalidRequest
from omniserve.runtime.client import Client, ServedModel
from omniserve.runtime.types import Embeddings, OmniRequest

router = APIRouter()


@router.post("/v1/embeddings")
async def create_embeddings(request: Request) -> Response:
    body = await read_json(request, EmbeddingRequest)
    client = get_client(request)
    model = embedding_model(client, body.model)
    width = model.facts.dimensions
    if body.dimensions is not None and body.dimensions > width:
        raise InvalidRequest(f"dimensions: this model's embeddings have {width} dimensions; got {body.dimensions}",
                             param="dimensions")
    inputs = body.inputs()
    params = {"input": inputs, "truncate_prompt_tokens": body.truncate_prompt_tokens}
    omni = OmniRequest(new_id("embd"), entry=model.entry, output_modalities=["embedding"],
                       params={model.stage: params})
    first, stream = await start(request, client, omni)
    vectors = np.zeros((len(inputs), width), np.float32)

    async def collect() -> None:
        async for out in stream:
            if isinstance(out.data, Embeddings):
                vectors[out.data.indices] = out.data.vectors

    await until_disconnect(request, collect())
    if body.dimensions is not None:
        vectors = vectors[:, :body.dimensions]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    data = [Embedding(object="embedding", index=i, embedding=_encoded(v, body.encoding_format))
            for i, v in enumerate(vectors)]
    tokens = first.prompt_tokens
    return model_response(EmbeddingList(object="list", data=data, model=body.model or model.id,
                                        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)))


def embedding_model(client: Client, model_id: str | None) -> ServedModel:
    """The model a request names: an embedding model, or the chat model (named, or the only choice,
    which OpenAI's embedding model names then reach too)."""
    if client.model(None, "embedding") is None and (model_id is None or model_id in OPENAI_EMBEDDING_NAMES):
        return resolve_model(client, None, "chat")
    named = client.model(model_id) if model_id else None
    if named is not None and named.kind == "chat":
        return named
    return resolve_model(client, model_id, "embedding")


def _encoded(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()
