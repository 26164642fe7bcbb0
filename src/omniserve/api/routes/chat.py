"""`POST /v1/chat/completions`: validate -> OmniRequest -> stream or collect.

Media rides along: audio, images and videos are fetched and decoded here,
and the request is routed through the stages that turn them into text for
the thinker: speech to text for audio (and a video's sound), the vision
stage for images and video frames. `modalities: ["text", "audio"]` adds the
talker, whose audio is interleaved with the text in the answer.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from omniserve.api.media import load_audio, load_image, load_video, resolve_voice
from omniserve.api.protocol.chat import AudioOutput, ChatCompletionRequest
from omniserve.api.protocol.common import parse_body, validate_fields
from omniserve.api.protocol.images import ImageChatFields, ImageGenerationRequest
from omniserve.api.protocol.tools import parse_calls
from omniserve.api.routes.common import (
    ChoiceState,
    Head,
    chat_logprobs,
    get_client,
    new_id,
    now,
    resolve_chat_model,
    start,
    until_disconnect,
    usage,
)
from omniserve.api.routes.images import encoded, generate
from omniserve.api.sse import SSE_HEADERS, sse_stream
from omniserve.errors import InvalidRequest
from omniserve.executors import request_params_model
from omniserve.media.audio import AudioEncoder
from omniserve.runtime.client import Client, ServedModel
from omniserve.runtime.types import OmniOutput, OmniRequest, audio_part, image_part, video_part

AUDIO_TTL_S = 3600  # `expires_at` of an audio answer; nothing is stored, the data is inline

router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request):
    raw = await request.body()
    body = parse_body(raw, ChatCompletionRequest)
    client = get_client(request)
    named = client.model(body.model) if body.model else None
    if named is not None and named.kind == "image":
        return await _chat_image(request, raw, body, named)
    served, adapter = resolve_chat_model(client, body.model, body.lora_path)
    model = f"{served.id}:{adapter}" if adapter else served.id
    request_id = new_id("chatcmpl")
    omni, talker = await _omni_request(request, client, body, served, request_id)
    omni.sampling[served.stage].lora = adapter
    first, stream = await start(request, client, omni, stage=served.stage)
    speech = _Speech(body.audio or AudioOutput(), talker) if talker else None
    report = request.app.state.settings.enable_cache_report
    head = Head(request_id, model, served.fingerprint)
    if body.stream:
        chunks = _chunks(body, head, first, stream, speech, report)
        return StreamingResponse(sse_stream(chunks), media_type="text/event-stream", headers=SSE_HEADERS)
    result = await until_disconnect(request, _collect(body, head, first, stream, speech, report))
    return JSONResponse(result)


async def _chat_image(request: Request, raw: bytes, body: ChatCompletionRequest, model: ServedModel) -> JSONResponse:
    """vLLM-Omni's chat as a universal endpoint: the last user message is the prompt and
    the answer's content is the image(s), as image_url parts with data URLs."""
    if body.stream:
        raise InvalidRequest(f"stream: model `{model.id}` makes images; ask without streaming", param="stream")
    user = next((m for m in reversed(body.messages) if m.role == "user"), None)
    prompt = user.content if user and isinstance(user.content, str) else " ".join(
        str(p.get("text", "")) for p in (user.parts if user else []) if p["type"] == "text")
    fields = {k: v for k, v in parse_body(raw, ImageChatFields).model_dump(exclude_none=True).items()}
    image_body = validate_fields({**fields, "prompt": prompt}, ImageGenerationRequest)
    outputs = await generate(request, model, image_body, image_body.dimensions())
    parts = [{"type": "image_url", "image_url": {"url": f"data:image/{image_body.output_format};base64,"
                                                        f"{base64.b64encode(blob).decode()}"}}
             for blob in await encoded(image_body, outputs)]
    return JSONResponse({
        **Head(new_id("chatcmpl"), model.id, model.fingerprint)("chat.completion"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": parts, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": usage(len(prompt.split()), 0),
    })


class _Speech:
    """The talker's side of an answer: which stage speaks, and each choice's audio encoder."""

    def __init__(self, audio: AudioOutput, talker: ServedModel):
        self.stage = talker.stage
        self.format = audio.encoding
        self.rate = talker.info["sample_rate"]
        self.encoders: dict[int, AudioEncoder] = {}
        self.ids: dict[int, str] = {}

    def encode(self, out: OmniOutput) -> bytes:
        """Choice `out.index`'s audio so far, encoded; its end closes the encoder."""
        if out.index not in self.encoders:
            self.encoders[out.index] = AudioEncoder(self.format, self.rate)
            self.ids[out.index] = new_id("audio")
        encoder = self.encoders[out.index]
        data = encoder.write(out.audio)
        return data + encoder.close() if out.finish_reason else data


async def _omni_request(request: Request, client: Client, body: ChatCompletionRequest, served: ServedModel,
                        request_id: str) -> tuple[OmniRequest, ServedModel | None]:
    """The request, routed through the stages it needs; also the talker, if it speaks."""
    refs = body.media_refs()
    limit = request.app.state.settings.max_media_items
    if len(refs) > limit:
        raise InvalidRequest(f"the request has {len(refs)} media items; the limit is {limit} (--max-media-items)",
                             param=refs[limit][0])
    native = set(served.info.get("native_media", ()))  # kinds the chat model reads itself (an omni checkpoint)
    asr = client.model(None, "asr")
    vision = client.model(None, "vision")
    for where, kind, _ in refs:
        if kind in native:
            continue
        if kind == "audio" and asr is None:
            raise InvalidRequest("this server has no speech-to-text stage for audio input (it was started with "
                                 "--asr-model none)", param=where)
        if kind in ("image", "video") and vision is None:
            raise InvalidRequest(f"this server has no vision stage for {kind} input (it was started with "
                                 "--vision-model none)", param=where)
    talker = client.model(None, "tts") if body.wants_audio else None
    if body.wants_audio and talker is None:
        raise InvalidRequest("this server has no text-to-speech stage for audio output (--text-only, --tts-model "
                             "none, or a checkpoint without audio output); drop 'audio' from modalities",
                             param="modalities")
    per_stage = body.per_stage()
    # the grammar first: a bad one is a 400 before any media is fetched
    grammar = await client.build_grammar(body.answer_grammar_spec(served.stage, per_stage.get(served.stage)))
    placeholders, audios, images = await _load_media(request, body, refs,
                                                     with_video_audio=asr is not None or "audio" in native)
    omni = body.to_omni_request(request_id, placeholders, served.stage, per_stage.get(served.stage),
                                served.info.get("template_tools", False))
    omni.sampling[served.stage].grammar = grammar
    omni.audios, omni.images = audios, images
    # the other stages' settings: the runtime checks them against each stage's executor
    omni.stage_sampling = {name: values for name, values in per_stage.items() if name != served.stage}
    if talker is not None:
        omni.output_modalities = ["text", "audio"]
        voice = resolve_voice(talker, (body.audio or AudioOutput()).voice_name, "audio.voice")
        stages = dict(client.stage_executors())
        for stage in client.stages_of(talker):
            params_model = request_params_model(stages[stage])
            if params_model is None:
                continue
            values = {"voice": voice, "choices": body.n}
            own = omni.stage_sampling.get(stage, {})
            if "seed" in params_model.model_fields and body.seed is not None and "seed" not in own:
                values["seed"] = body.seed  # one seed for the whole answer, its voice too
            omni.params[stage] = values
    return omni, talker


async def _load_media(request: Request, body: ChatCompletionRequest, refs: list[tuple[str, str, Any]],
                      with_video_audio: bool) -> tuple[dict[str, list[dict[str, Any]]], list[Any], list[Any]]:
    """Fetch and decode every media item at once; return the placeholder parts each one
    becomes (by where it sits) and the decoded audio and images they point into."""
    def load(where: str, kind: str, ref: Any):
        if kind == "audio":
            return load_audio(request, ref, where)
        if kind == "image":
            return load_image(request, ref, where)
        return load_video(request, ref, where, body.video_fps, body.video_max_frames,
                          body.use_audio_in_video and with_video_audio)

    loaded = await asyncio.gather(*(load(*r) for r in refs), return_exceptions=True)
    failed = next((item for item in loaded if isinstance(item, BaseException)), None)
    if failed is not None:
        raise failed  # the first bad item by position, whichever finished first
    placeholders: dict[str, list[dict[str, Any]]] = {}
    audios: list[Any] = []
    images: list[Any] = []
    for (where, kind, _), item in zip(refs, loaded, strict=True):
        if kind == "audio":
            audios.append(item)
            placeholders[where] = [audio_part(len(audios) - 1)]
        elif kind == "image":
            images.append(item)
            placeholders[where] = [image_part(len(images) - 1)]
        else:
            first = len(images)
            images += item.frames
            if item.audio is not None:
                audios.append(item.audio)
            placeholders[where] = [video_part(list(range(first, len(images))), item.timestamps, item.duration,
                                              len(audios) - 1 if item.audio is not None else None)]
    return placeholders, audios, images


async def _collect(body: ChatCompletionRequest, head: Head, first: OmniOutput, stream: AsyncIterator[OmniOutput],
                   speech: _Speech | None, report: bool) -> dict[str, Any]:
    """`report`: usage says how many prompt tokens came from the prefix cache (--enable-cache-report)."""
    choices = [ChoiceState() for _ in range(body.n)]
    audio = [bytearray() for _ in range(body.n)]
    prompt_tokens = first.prompt_tokens  # the thinker's; with audio, the talker's first output may come first
    async for out in stream:
        prompt_tokens = out.prompt_tokens or prompt_tokens
        if speech and out.stage == speech.stage:
            audio[out.index] += speech.encode(out)
        else:
            choices[out.index].add(out)
    result = {
        **head("chat.completion"),
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": "".join(c.text), "refusal": None},
                "logprobs": chat_logprobs(c.logprobs) if body.logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices),
                       choices[0].cached_tokens if report else None),
    }
    if body.calls_tools:
        for choice in result["choices"]:
            content, calls = parse_calls(choice["message"]["content"], body.tools)
            if calls:
                choice["message"].update(content=content, tool_calls=calls)
                choice["finish_reason"] = "tool_calls" if choice["finish_reason"] == "stop" else choice["finish_reason"]
    if speech:
        for i, choice in enumerate(result["choices"]):
            choice["message"]["audio"] = {"id": speech.ids.get(i) or new_id("audio"),
                                          "data": base64.b64encode(audio[i]).decode(),
                                          "expires_at": now() + AUDIO_TTL_S, "transcript": "".join(choices[i].text)}
    return result


async def _chunks(body: ChatCompletionRequest, head: Head, first: OmniOutput, stream: AsyncIterator[OmniOutput],
                  speech: _Speech | None, report: bool) -> AsyncIterator[dict[str, Any]]:
    def chunk(index: int, delta: dict, finish_reason: str | None = None, logprobs: Any = None) -> dict:
        return {**head("chat.completion.chunk"),
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}

    completion_tokens = [0] * body.n
    prompt_tokens = first.prompt_tokens
    cached = 0
    held = [""] * body.n  # with tools, each choice's text until it ends: it may be tool calls
    # with audio, a choice's finish_reason waits for its last audio: (text's reason, audio ended) per choice
    ending: list[list[Any]] = [[None, False] for _ in range(body.n)]

    def tool_chunks(index: int, finish_reason: str) -> Iterator[dict]:
        """The held text of a choice as OpenAI streams tool calls: per call, its id and name,
        then its arguments; or as content when it holds no call."""
        content, calls = parse_calls(held[index], body.tools)
        if content:
            yield chunk(index, {"content": content})
        for k, call in enumerate(calls):
            yield chunk(index, {"tool_calls": [{"index": k, "id": call["id"], "type": "function",
                                                "function": {"name": call["function"]["name"], "arguments": ""}}]})
            yield chunk(index, {"tool_calls": [{"index": k, "function": {"arguments": call["function"]["arguments"]}}]})
        yield chunk(index, {}, finish_reason="tool_calls" if calls and finish_reason == "stop" else finish_reason)

    def end_spoken(index: int) -> Iterator[dict]:
        reason, spoken = ending[index]
        if reason and spoken:
            yield chunk(index, {}, finish_reason=reason)

    try:
        for i in range(body.n):
            yield chunk(i, {"role": "assistant", "content": ""})
        async for out in stream:
            prompt_tokens = out.prompt_tokens or prompt_tokens
            if speech and out.stage == speech.stage:
                data = speech.encode(out)
                if data or out.text or out.finish_reason:
                    audio = {"id": speech.ids[out.index], "data": base64.b64encode(data).decode(),
                             "transcript": out.text}
                    if out.finish_reason:
                        audio["expires_at"] = now() + AUDIO_TTL_S
                    yield chunk(out.index, {"audio": audio})
                if out.finish_reason:
                    ending[out.index][1] = True
                    for piece in end_spoken(out.index):
                        yield piece
                continue
            if body.calls_tools:
                held[out.index] += out.text
            elif out.text or out.logprobs:
                lp = chat_logprobs(out.logprobs) if body.logprobs and out.logprobs else None
                yield chunk(out.index, {"content": out.text}, logprobs=lp)
            if out.finish_reason:
                completion_tokens[out.index] = out.completion_tokens
                cached = out.cached_tokens if out.index == 0 else cached
                if body.calls_tools:
                    for piece in tool_chunks(out.index, out.finish_reason):
                        yield piece
                elif speech:
                    ending[out.index][0] = out.finish_reason
                    for piece in end_spoken(out.index):
                        yield piece
                else:
                    yield chunk(out.index, {}, finish_reason=out.finish_reason)
        if body.include_usage:
            yield {**head("chat.completion.chunk"), "choices": [],
                   "usage": usage(prompt_tokens, sum(completion_tokens), cached if report else None)}
    finally:
        await stream.aclose()  # on disconnect this aborts the request in the pipeline
