"""`POST /v1/embeddings`: validate -> OmniRequest to the embedding stage -> vectors, as floats
or base64 (little-endian float32, as OpenAI's SDK decodes them), cut to `dimensions` and
normalised again."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from omniserve.api.protocol.common import parse_body
from omniserve.api.protocol.embeddings import EmbeddingRequest
from omniserve.api.routes.common import get_client, new_id, resolve_model, start, until_disconnect
from omniserve.errors import InvalidRequest
from omniserve.runtime.types import OmniRequest

router = APIRouter()


@router.post("/v1/embeddings")
async def create_embeddings(request: Request):
    body = parse_body(await request.body(), EmbeddingRequest)
    client = get_client(request)
    model = resolve_model(client, body.model, "embedding")
    width = model.info["dimensions"]
    if body.dimensions is not None and body.dimensions > width:
        raise InvalidRequest(f"dimensions: this model's embeddings have {width} dimensions; got {body.dimensions}",
                             param="dimensions")
    inputs = body.inputs()
    params = {"input": inputs, "truncate_prompt_tokens": body.truncate_prompt_tokens}
    omni = OmniRequest(new_id("embd"), route=[model.stage], emit=[model.stage], params={model.stage: params})
    first, stream = await start(client, omni)
    vectors = np.zeros((len(inputs), width), np.float32)

    async def collect() -> None:
        async for out in stream:
            if "embeddings" in out.info:
                vectors[out.info["indices"]] = out.info["embeddings"]

    await until_disconnect(request, collect())
    if body.dimensions is not None:
        vectors = vectors[:, :body.dimensions]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    data = [{"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
            for i, v in enumerate(vectors)]
    tokens = first.info["prompt_tokens"]
    return JSONResponse({"object": "list", "data": data, "model": body.model or model.id,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _encoded(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return vector.tolist()
