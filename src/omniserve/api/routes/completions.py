"""`POST /v1/completions`: one pipeline request per prompt, merged into one response.

Choice `index` is `prompt_number * n + choice`, as at OpenAI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from omniserve.api.protocol.common import Usage
from omniserve.api.protocol.completions import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest
from omniserve.api.routes.choices import Choice, Ended, TextPiece
from omniserve.api.routes.common import (
    Head,
    client_address,
    get_client,
    merge,
    model_response,
    new_id,
    read_json,
    resolve_chat_model,
    start_all,
    until_disconnect,
)
from omniserve.api.sse import SSE_HEADERS, sse_stream
from omniserve.runtime.types import OmniOutput, TokenLogprob

router = APIRouter()


@router.post("/v1/completions")
async def create_completion(request: Request):
    body = await read_json(request, CompletionRequest)
    client = get_client(request)
    served, adapter = resolve_chat_model(client, body.model, body.lora_path)
    head = Head(new_id("cmpl"), f"{served.id}:{adapter}" if adapter else served.id, served.fingerprint)
    requests = body.to_omni_requests(head.id, served.stage)
    grammar = await client.build_grammar(body.grammar_spec(), client_address(request))
    for omni in requests:
        omni.sampling[served.stage].lora = adapter
        omni.sampling[served.stage].grammar = grammar
    started = await start_all(request, client, requests)
    firsts = [f for f, _ in started]
    streams = [s for _, s in started]
    report = request.app.state.settings.enable_cache_report
    if body.stream:
        chunks = _chunks(body, head, firsts, streams, report)
        return StreamingResponse(sse_stream(chunks), media_type="text/event-stream", headers=SSE_HEADERS)
    return model_response(await until_disconnect(request, _collect(body, head, firsts, streams, report)))


class _Echo:
    """What `echo` puts before each choice: its prompt, and with `logprobs`, the prompt's own
    logprobs (the thinker sends them once per prompt, before the first token)."""

    def __init__(self, body: CompletionRequest):
        self.body = body
        self.prompt_logprobs: dict[int, list[TokenLogprob]] = {}

    def text(self, index: int) -> str:
        return self.body.prompts()[index // self.body.n] if self.body.echo else ""  # type: ignore[return-value]

    def logprobs(self, index: int) -> list[TokenLogprob]:
        return self.prompt_logprobs.get(index // self.body.n, []) if self.body.echo else []

    def ready(self, index: int) -> bool:
        """Whether the echo of `index` can go out (its prompt's logprobs are here, if wanted)."""
        return self.body.logprobs is None or index // self.body.n in self.prompt_logprobs


async def _collect(body: CompletionRequest, head: Head, firsts: list[OmniOutput],
                   streams: list[AsyncIterator[OmniOutput]], report: bool) -> Completion:
    echo = _Echo(body)
    choices = [Choice(i) for i in range(len(streams) * body.n)]
    async for p, out in merge(streams):
        if out.prompt_logprobs is not None:
            echo.prompt_logprobs[p] = out.prompt_logprobs
        choices[p * body.n + out.index].take(out)
    return Completion(
        **head.fields,
        choices=[CompletionChoice(index=c.index, text=echo.text(c.index) + c.full_text, finish_reason=c.finish_reason,
                                  logprobs=CompletionLogprobs.of(echo.logprobs(c.index) + c.logprobs, 0)
                                  if body.logprobs is not None else None) for c in choices],
        usage=Usage.of(sum(f.prompt_tokens for f in firsts), sum(c.completion_tokens for c in choices),
                       sum(c.cached_tokens for c in choices[::body.n]) if report else None),
    )


async def _chunks(body: CompletionRequest, head: Head, firsts: list[OmniOutput],
                  streams: list[AsyncIterator[OmniOutput]], report: bool) -> AsyncIterator[Completion]:
    echo = _Echo(body)
    choices = [Choice(i) for i in range(len(streams) * body.n)]
    offsets = [0] * len(choices)  # characters streamed so far, for the logprobs' text_offset
    waiting: dict[int, list[OmniOutput]] = {c.index: [] for c in choices}  # until each choice's echo is out

    def chunk(index: int, text: str, finish_reason: str | None = None,
              logprobs: CompletionLogprobs | None = None) -> Completion:
        return Completion(**head.fields, choices=[CompletionChoice(index=index, text=text, logprobs=logprobs,
                                                                   finish_reason=finish_reason)])

    def pieces(index: int, out: OmniOutput) -> Iterator[Completion]:
        for piece in choices[index].take(out):
            if isinstance(piece, TextPiece):
                lp = CompletionLogprobs.of(piece.logprobs or [], offsets[index]) if body.logprobs is not None \
                    else None
                offsets[index] += len(piece.text)
                yield chunk(index, piece.text, logprobs=lp)
            elif isinstance(piece, Ended):
                yield chunk(index, "", finish_reason=piece.finish_reason)

    def release(index: int) -> Iterator[Completion]:
        """The echo of `index` once it can go out, then what waited behind it."""
        if waiting.get(index) is None or not echo.ready(index):
            return
        text = echo.text(index)
        lp = CompletionLogprobs.of(echo.logprobs(index), 0) if body.logprobs is not None else None
        offsets[index] = len(text)
        yield chunk(index, text, logprobs=lp)
        for out in waiting.pop(index):
            yield from pieces(index, out)

    if body.echo:
        for c in choices:
            for piece in release(c.index):
                yield piece
    else:
        waiting.clear()
    async for p, out in merge(streams):
        index = p * body.n + out.index
        if out.prompt_logprobs is not None:
            echo.prompt_logprobs[p] = out.prompt_logprobs
            for i in range(p * body.n, (p + 1) * body.n):
                for piece in release(i):
                    yield piece
        if index in waiting:
            waiting[index].append(out)
        else:
            for piece in pieces(index, out):
                yield piece
    if body.include_usage:
        yield Completion(**head.fields, choices=[],
                         usage=Usage.of(sum(f.prompt_tokens for f in firsts), sum(c.completion_tokens for c in choices),
                                        sum(c.cached_tokens for c in choices[::body.n]) if report else None))
