"""Helpers every generation route shares: model lookup, first-output
validation, disconnect-aware collection, and OpenAI-shaped pieces."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.requests import HTTPConnection

from omniserve.api.protocol.common import parse_body
from omniserve.errors import ClientClosedRequest, InvalidRequest, ModelNotFound, OmniError, UnsupportedMediaType
from omniserve.executors import request_params_model
from omniserve.runtime.client import Client, ServedModel
from omniserve.runtime.types import OmniOutput, OmniRequest


@dataclass(frozen=True)
class Head:
    """The fields every response and stream chunk of one request begins with."""

    id: str
    model: str
    system_fingerprint: str
    created: int = field(default_factory=lambda: now())

    @property
    def fields(self) -> dict[str, Any]:
        """The `ResponseHead` fields of every response model."""
        return {"id": self.id, "created": self.created, "model": self.model,
                "system_fingerprint": self.system_fingerprint}


T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def public_url(request: Request, path: str) -> str:
    """A link to `path` on this server: under --public-base-url, else at the address and port the request
    came in on. Never from the Host header, which the client writes (a link must not point elsewhere)."""
    settings = request.app.state.settings
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/") + path
    host, port = request.scope.get("server") or (settings.host, settings.port)
    host = f"[{host}]" if ":" in host else host
    return f"{request.url.scheme}://{host}:{port}{path}"


def is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


async def read_json(request: Request, model: type[M], empty_ok: bool = False) -> M:
    """The body as `model`. JSON comes as `application/json` only: a web page cannot send that to another
    site without asking it first (CORS), while `text/plain` and form bodies it can. `empty_ok`: no body is {}."""
    raw = await request.body()
    if not raw and empty_ok:
        raw = b"{}"
    elif not is_json(request):
        kind = request.headers.get("content-type") or "none"
        raise UnsupportedMediaType(f"the body must be JSON sent with 'Content-Type: application/json'; got "
                                   f"{kind[:100]!r}")
    return parse_body(raw, model)


def get_client(request: Request) -> Client:
    return request.app.state.client


def client_address(request: HTTPConnection) -> str:
    """Who sends the request, for a fair share of what clients contend for: its address (the connection's
    peer, not a header it could write)."""
    return request.client.host if request.client else ""


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


_KINDS = {
    "chat": ("a chat", "/v1/chat/completions and /v1/completions"),
    "asr": ("a speech-to-text", "/v1/audio/transcriptions and /v1/audio/translations"),
    "tts": ("a text-to-speech", "/v1/audio/speech"),
    "image": ("an image-generation", "/v1/images/generations"),
    "vision": ("an image-description", "image_url and video_url parts in /v1/chat/completions to the chat model"),
    "embedding": ("an embedding", "/v1/embeddings"),
    "speaker": ("a speaker-embedding", "the voice library's consent checks (/v1/audio/voice_consents)"),
}


def resolve_model(client: Client, model_id: str | None, kind: str | None = "chat") -> ServedModel:
    """The served model a request names (None: the first of `kind`), checked to do `kind`."""
    served = client.model(model_id, kind or "chat")
    if served is None:
        if model_id is None:
            raise InvalidRequest(f"this server serves no {_KINDS[kind][0].split(' ', 1)[1]} model", param="model")
        ids = ", ".join(m.id for m in client.served_models)
        raise ModelNotFound(f"The model `{model_id}` does not exist. Served models: {ids}", param="model")
    if kind is not None and served.kind != kind:
        article, endpoints = _KINDS[served.kind]
        raise InvalidRequest(f"model `{model_id}` is {article} model; use it with {endpoints}", param="model")
    return served


def resolve_chat_model(client: Client, model_id: str | None, lora_path: str | None) -> tuple[ServedModel, str | None]:
    """The chat model and the LoRA adapter a request names: `model: "base:adapter"` (SGLang) or
    `lora_path: "adapter"`. The thinker, which holds the adapters, answers 404 for one it has not
    loaded (the list here, for /v1/models, can lag behind it: a restarted worker has lost the
    adapters loaded at run time)."""
    adapter = lora_path
    if model_id and client.model(model_id) is None and ":" in model_id:
        model_id, adapter = model_id.rsplit(":", 1)
    return resolve_model(client, model_id), adapter


def stage_params(client: Client, model: ServedModel, values: dict[str, Any], seed: int | None = None,
                 keep_seed: set[str] | frozenset[str] = frozenset(),
                 offered: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """`values` for each stage of `model` that takes settings, with `seed` where a stage has one (one seed
    for a whole answer, its voice too), except in `keep_seed` (stages whose caller set their own), and
    `offered` where a stage takes them."""
    params = {}
    for stage, params_model in _params_models(client, model):
        if params_model is None:
            continue
        extra = {"seed": seed} if seed is not None and stage not in keep_seed else {}
        extra.update(offered or {})
        params[stage] = {**values, **{k: v for k, v in extra.items() if k in params_model.model_fields}}
    return params


def takes(client: Client, model: ServedModel, setting: str) -> bool:
    """Whether a stage of `model` takes `setting` (in its request params)."""
    return any(m is not None and setting in m.model_fields for _, m in _params_models(client, model))


def _params_models(client: Client, model: ServedModel) -> list[tuple[str, Any]]:
    executors = dict(client.stage_executors())
    return [(stage, request_params_model(executors[stage])) for stage in model.path]


async def start(http: Request, client: Client, request: OmniRequest,
                stage: str | None = None) -> tuple[OmniOutput, AsyncIterator[OmniOutput]]:
    """Start a request and wait for its first output (of `stage`, when given: the stage that checks the
    request most, whose outputs other stages may overtake), so that validation errors (prompt too long,
    ...) become a proper 4xx before any stream begins. A client that leaves while the request waits for
    a slot takes it out of the line."""
    return await until_disconnect(http, _first(client, request, stage))


async def start_all(http: Request, client: Client, requests: list[OmniRequest]
                    ) -> list[tuple[OmniOutput, AsyncIterator[OmniOutput]]]:
    """Start several requests together; if one is rejected (or the client leaves), end the others."""
    return await until_disconnect(http, _first_of_all(client, requests))


async def _first(client: Client, request: OmniRequest,
                 stage: str | None = None) -> tuple[OmniOutput, AsyncIterator[OmniOutput]]:
    stream = client.generate(request)
    held: list[OmniOutput] = []  # other stages' outputs that came before `stage`'s first
    try:
        while True:
            first = await anext(stream)
            if stage is None or first.stage == stage:
                break
            held.append(first)
    except StopAsyncIteration:
        await stream.aclose()
        raise OmniError("the pipeline ended the request without output") from None
    except BaseException:
        await stream.aclose()
        raise
    return first, (_replay(held, stream) if held else stream)


async def _replay(held: list[OmniOutput], stream: AsyncIterator[OmniOutput]) -> AsyncIterator[OmniOutput]:
    """The outputs held back, then the rest of the stream."""
    try:
        for out in held:
            yield out
        async for out in stream:
            yield out
    finally:
        await stream.aclose()


async def _first_of_all(client: Client, requests: list[OmniRequest]
                        ) -> list[tuple[OmniOutput, AsyncIterator[OmniOutput]]]:
    return await together([_first(client, r) for r in requests], undo=lambda started: started[1].aclose())


async def together(coros: list[Awaitable[T]], undo: Callable[[T], Awaitable[Any]] | None = None) -> list[T]:
    """Run `coros` at once. If one fails (or the caller leaves), cancel the others, which aborts their
    requests, `undo` those that had finished, and raise."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if undo is not None and not task.cancelled() and task.exception() is None:
                await undo(task.result())
        raise


async def merge(streams: list[AsyncIterator[OmniOutput]]) -> AsyncIterator[tuple[int, OmniOutput]]:
    """Interleave several output streams as they produce, tagged by stream number."""
    if len(streams) == 1:
        try:
            async for out in streams[0]:
                yield 0, out
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump(i: int, stream: AsyncIterator[OmniOutput]) -> None:
        try:
            async for out in stream:
                await queue.put((i, out))
        except BaseException as exc:  # surfaced to the consumer below
            await queue.put((i, exc))
        finally:
            await queue.put((i, end))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is end:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        # a stream is closed only once its pump has stopped iterating it
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()


async def until_disconnect(request: Request, work: Any) -> Any:
    """Await `work`, but cancel it (aborting the request) if the client leaves."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.2)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise ClientClosedRequest("the client disconnected before the answer was ready; the request was "
                                          "aborted")
    finally:
        if not task.done():
            task.cancel()


def model_response(body: BaseModel, status_code: int = 200) -> Response:
    """A response model as the JSON body (fields it omits while None stay out): every JSON route answers with
    the model that `/openapi.json` documents for it."""
    return Response(body.model_dump_json(), status_code=status_code, media_type="application/json")


async def _read(file: BinaryIO, chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
    try:
        while data := await asyncio.to_thread(file.read, chunk):
            yield data
    finally:
        file.close()


def open_file_response(file: BinaryIO, media_type: str, filename: str | None = None) -> StreamingResponse:
    """A stored file sent from its open handle: a DELETE or an expiry that removes it meanwhile neither fails
    the download nor cuts it short of its Content-Length (files are only ever replaced whole)."""
    headers = {"Content-Length": str(os.fstat(file.fileno()).st_size)}
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return StreamingResponse(_read(file), media_type=media_type, headers=headers)
