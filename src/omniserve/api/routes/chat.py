"""`POST /v1/chat/completions`: validate -> OmniRequest -> stream or collect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from omniserve.api.protocol.chat import ChatCompletionRequest
from omniserve.api.protocol.common import parse_body
from omniserve.api.routes.common import (
    ChoiceState,
    chat_logprobs,
    get_client,
    new_id,
    now,
    resolve_model,
    start,
    until_disconnect,
    usage,
)
from omniserve.api.sse import SSE_HEADERS, sse_stream
from omniserve.runtime.types import OmniOutput

router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request):
    body = parse_body(await request.body(), ChatCompletionRequest)
    client = get_client(request)
    model = resolve_model(client, body.model).id
    request_id = new_id("chatcmpl")
    first, stream = await start(client, body.to_omni_request(request_id))
    if body.stream:
        chunks = _chunks(body, request_id, model, first, stream)
        return StreamingResponse(sse_stream(chunks), media_type="text/event-stream", headers=SSE_HEADERS)
    result = await until_disconnect(request, _collect(body, request_id, model, first, stream))
    return JSONResponse(result)


async def _collect(body: ChatCompletionRequest, request_id: str, model: str, first: OmniOutput,
                   stream: AsyncIterator[OmniOutput]) -> dict[str, Any]:
    choices = [ChoiceState() for _ in range(body.n)]
    async for out in stream:
        choices[out.index].add(out)
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": "".join(c.text), "refusal": None},
                "logprobs": chat_logprobs(c.logprobs) if body.logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage(first.prompt_tokens, sum(c.completion_tokens for c in choices)),
    }


async def _chunks(body: ChatCompletionRequest, request_id: str, model: str, first: OmniOutput,
                  stream: AsyncIterator[OmniOutput]) -> AsyncIterator[dict[str, Any]]:
    created = now()
    with_usage = body.include_usage

    def chunk(index: int, delta: dict, finish_reason: str | None = None, logprobs: Any = None) -> dict:
        out = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
        }
        if with_usage:
            out["usage"] = None
        return out

    completion_tokens = [0] * body.n
    try:
        for i in range(body.n):
            yield chunk(i, {"role": "assistant", "content": ""})
        async for out in stream:
            if out.text or out.logprobs:
                lp = chat_logprobs(out.logprobs) if body.logprobs and out.logprobs else None
                yield chunk(out.index, {"content": out.text}, logprobs=lp)
            if out.finish_reason:
                completion_tokens[out.index] = out.completion_tokens
                yield chunk(out.index, {}, finish_reason=out.finish_reason)
        if with_usage:
            yield {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [],
                "usage": usage(first.prompt_tokens, sum(completion_tokens)),
            }
    finally:
        await stream.aclose()  # on disconnect this aborts the request in the pipeline
