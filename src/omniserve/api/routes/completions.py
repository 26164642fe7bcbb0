"""`POST /v1/completions`: one pipeline request per prompt, merged into one response.

Choice `index` is `prompt_number * n + choice`, as at OpenAI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from omniserve.api.protocol.common import parse_body
from omniserve.api.protocol.completions import CompletionRequest
from omniserve.api.routes.common import (
    ChoiceState,
    completion_logprobs,
    get_client,
    merge,
    new_id,
    now,
    resolve_chat_model,
    start_all,
    until_disconnect,
    usage,
)
from omniserve.api.sse import SSE_HEADERS, sse_stream
from omniserve.runtime.types import OmniOutput

router = APIRouter()


@router.post("/v1/completions")
async def create_completion(request: Request):
    body = parse_body(await request.body(), CompletionRequest)
    client = get_client(request)
    served, adapter = resolve_chat_model(client, body.model, body.lora_path)
    model = f"{served.id}:{adapter}" if adapter else served.id
    request_id = new_id("cmpl")
    requests = body.to_omni_requests(request_id, served.stage)
    grammar = await request.app.state.grammars.build(body.grammar_spec())
    for omni in requests:
        omni.sampling[served.stage].lora = adapter
        omni.sampling[served.stage].grammar = grammar
    started = await start_all(request, client, requests)
    firsts = [f for f, _ in started]
    streams = [s for _, s in started]
    if body.stream:
        chunks = _chunks(body, request_id, model, firsts, streams, request.app.state.settings.enable_cache_report)
        return StreamingResponse(sse_stream(chunks), media_type="text/event-stream", headers=SSE_HEADERS)
    result = await until_disconnect(request, _collect(body, request_id, model, firsts, streams,
                                                      request.app.state.settings.enable_cache_report))
    return JSONResponse(result)


def _echo(body: CompletionRequest, prompt_number: int) -> str:
    return body.prompts()[prompt_number] if body.echo else ""  # type: ignore[return-value]


async def _collect(body: CompletionRequest, request_id: str, model: str, firsts: list[OmniOutput],
                   streams: list[AsyncIterator[OmniOutput]], report: bool) -> dict[str, Any]:
    choices = [ChoiceState() for _ in range(len(streams) * body.n)]
    async for p, out in merge(streams):
        choices[p * body.n + out.index].add(out)
    return {
        "id": request_id,
        "object": "text_completion",
        "created": now(),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": i,
                "text": _echo(body, i // body.n) + "".join(c.text),
                "logprobs": completion_logprobs(c.logprobs, 0) if body.logprobs is not None else None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage(sum(f.prompt_tokens for f in firsts), sum(c.completion_tokens for c in choices),
                       sum(c.cached_tokens for c in choices[::body.n]) if report else None),
    }


async def _chunks(body: CompletionRequest, request_id: str, model: str, firsts: list[OmniOutput],
                  streams: list[AsyncIterator[OmniOutput]], report: bool) -> AsyncIterator[dict[str, Any]]:
    created = now()
    with_usage = body.include_usage
    offsets = [0] * (len(streams) * body.n)
    completion_tokens = [0] * len(offsets)
    cached = [0] * len(offsets)

    def chunk(index: int, text: str, finish_reason: str | None = None, logprobs: Any = None) -> dict:
        out = {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}],
        }
        if with_usage:
            out["usage"] = None
        return out

    if body.echo:
        for i in range(len(offsets)):
            offsets[i] = len(_echo(body, i // body.n))
            yield chunk(i, _echo(body, i // body.n))
    async for p, out in merge(streams):
        index = p * body.n + out.index
        if out.text or out.logprobs:
            lp = completion_logprobs(out.logprobs or [], offsets[index]) if body.logprobs is not None else None
            offsets[index] += len(out.text)
            yield chunk(index, out.text, logprobs=lp)
        if out.finish_reason:
            completion_tokens[index] = out.completion_tokens
            cached[index] = out.cached_tokens
            yield chunk(index, "", finish_reason=out.finish_reason)
    if with_usage:
        yield {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [],
            "usage": usage(sum(f.prompt_tokens for f in firsts), sum(completion_tokens),
                           sum(cached[::body.n]) if report else None),
        }
