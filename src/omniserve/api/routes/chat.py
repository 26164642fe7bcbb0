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
from fastapi.responses import Response, StreamingResponse
from starlette.requests import HTTPConnection

from omniserve.api.media import load_audio, load_image, load_video
from omniserve.api.protocol.chat import (
    AnswerAudio,
    AnswerMessage,
    AudioOutput,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    ChunkChoice,
    ToolCallDelta,
)
from omniserve.api.protocol.common import Usage, parse_body, validate_fields
from omniserve.api.protocol.images import ImageChatFields, ImageGenerationRequest
from omniserve.api.protocol.tools import parse_calls
from omniserve.api.routes.choices import AudioPiece, Choice, Ended, Piece, TextPiece
from omniserve.api.routes.common import (
    Head,
    client_address,
    get_client,
    model_response,
    new_id,
    now,
    read_json,
    resolve_chat_model,
    stage_params,
    start,
    until_disconnect,
)
from omniserve.api.routes.images import encoded, generate
from omniserve.api.speakers import Speakers
from omniserve.api.sse import SSE_HEADERS, sse_stream
from omniserve.errors import InvalidRequest
from omniserve.media.audio import AudioEncoder
from omniserve.runtime.client import Client, ServedModel
from omniserve.runtime.types import OmniOutput, OmniRequest, audio_part, image_part, video_part

AUDIO_TTL_S = 3600  # `expires_at` of an audio answer; nothing is stored, the data is inline

router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request):
    body = await read_json(request, ChatCompletionRequest)
    client = get_client(request)
    named = client.model(body.model) if body.model else None
    if named is not None and named.kind == "image":
        return await _chat_image(request, body, named)
    served, adapter = resolve_chat_model(client, body.model, body.lora_path)
    model = f"{served.id}:{adapter}" if adapter else served.id
    request_id = new_id("chatcmpl")
    omni, talker = await chat_omni_request(request, client, body, served, request_id)
    omni.sampling[served.stage].lora = adapter
    first, stream = await start(request, client, omni, stage=served.stage)
    speech = _Speech(body.audio or AudioOutput(), talker) if talker else None
    report = request.app.state.settings.enable_cache_report
    head = Head(request_id, model, served.fingerprint)
    if body.stream:
        chunks = _chunks(body, head, first, stream, speech, report)
        return StreamingResponse(sse_stream(chunks), media_type="text/event-stream", headers=SSE_HEADERS)
    return model_response(await until_disconnect(request, _collect(body, head, first, stream, speech, report)))


async def _chat_image(request: Request, body: ChatCompletionRequest, model: ServedModel) -> Response:
    """vLLM-Omni's chat as a universal endpoint: the last user message is the prompt and
    the answer's content is the image(s), as image_url parts with data URLs."""
    if body.stream:
        raise InvalidRequest(f"stream: model `{model.id}` makes images; ask without streaming", param="stream")
    user = next((m for m in reversed(body.messages) if m.role == "user"), None)
    prompt = user.content if user and isinstance(user.content, str) else " ".join(
        str(p.get("text", "")) for p in (user.parts if user else []) if p["type"] == "text")
    fields = {k: v for k, v in parse_body(await request.body(), ImageChatFields).model_dump(exclude_none=True).items()}
    image_body = validate_fields({**fields, "prompt": prompt}, ImageGenerationRequest)
    outputs = await generate(request, model, image_body, image_body.dimensions())
    parts = [{"type": "image_url", "image_url": {"url": f"data:image/{image_body.output_format};base64,"
                                                        f"{base64.b64encode(blob).decode()}"}}
             for blob in await encoded(image_body, outputs)]
    return model_response(ChatCompletion(
        **Head(new_id("chatcmpl"), model.id, model.fingerprint).fields,
        choices=[ChatChoice(index=0, message=AnswerMessage(content=parts), finish_reason="stop")],
        usage=Usage.of(len(prompt.split()), 0)))


class _Speech:
    """The talker's side of an answer: which stage speaks, and each choice's audio encoder."""

    def __init__(self, audio: AudioOutput, talker: ServedModel):
        self.stage = talker.stage
        self.format = audio.encoding
        self.rate = talker.facts.sample_rate
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


def vision_media(client: Client) -> set[str]:
    """What the vision stage takes: images (described, or encoded by a --mmproj projector), and audio when the
    projector hears."""
    vision = client.model(None, "vision")
    return set(vision.facts.media or ["image"]) if vision is not None else set()


def hears_itself(client: Client, served: ServedModel) -> bool:
    """Whether the chat model takes audio as its own embeddings: an omni checkpoint, or a GGUF whose
    projector (--mmproj) hears. Then audio goes to it, not through speech to text."""
    return "audio" in (served.facts.native_media or ()) or "audio" in vision_media(client)


def _unread(client: Client, kind: str) -> str:
    """Why a chat model takes no `kind` input (the runtime's routing says whether it does), in the flags that
    would change it."""
    if kind == "audio":
        return "this server has no speech-to-text stage for audio input (it was started with --asr-model none)"
    why = "its --mmproj projector hears only" if vision_media(client) else "it was started with --vision-model none"
    return f"this server has no vision stage for {kind} input ({why})"


async def chat_omni_request(request: HTTPConnection, client: Client, body: ChatCompletionRequest,
                            served: ServedModel, request_id: str) -> tuple[OmniRequest, ServedModel | None]:
    """The request, routed through the stages it needs; also the talker, if it speaks. `request`: the
    HTTP request or the realtime WebSocket (the server's media limits)."""
    refs = body.media_refs()
    limit = request.app.state.settings.max_media_items
    if len(refs) > limit:
        raise InvalidRequest(f"the request has {len(refs)} media items; the limit is {limit} (--max-media-items)",
                             param=refs[limit][0])
    for where, kind, _ in refs:  # video: its frames are images
        if ("image" if kind == "video" else kind) not in served.reads:
            raise InvalidRequest(_unread(client, kind), param=where)
    # a named voice must be one, spoken or not; it picks the talker that speaks
    voices = Speakers(client, getattr(request.app.state, "voice_library", None))
    speaker = voices.pick((body.audio or AudioOutput()).voice_name, "audio.voice")
    talker = speaker if body.wants_audio else None
    if body.wants_audio and talker is None:
        raise InvalidRequest("this server has no text-to-speech stage for audio output (--text-only, --tts-model "
                             "none, or a checkpoint without audio output); drop 'audio' from modalities",
                             param="modalities")
    per_stage = body.per_stage()
    # the grammar first: a bad one is a 400 before any media is fetched
    grammar = await client.build_grammar(body.answer_grammar_spec(served.stage, per_stage.get(served.stage)),
                                         client_address(request))
    placeholders, audios, images = await _load_media(request, body, refs, with_video_audio="audio" in served.reads)
    omni = body.to_omni_request(request_id, placeholders, served.stage, per_stage.get(served.stage),
                                bool(served.facts.template_tools))
    sampling = omni.sampling[served.stage]
    sampling.grammar = grammar
    if sampling.max_tokens is None:  # as at OpenAI, what the context leaves, unless the operator caps it
        sampling.max_tokens = request.app.state.settings.default_max_tokens
    omni.audios, omni.images = audios, images
    # the other stages' settings: the runtime checks them against each stage's executor
    omni.stage_sampling = {name: values for name, values in per_stage.items() if name != served.stage}
    if talker is not None:
        omni.output_modalities = ["text", "audio"]
        omni.makers = {"audio": talker.stage}
        voice = voices.resolve(talker, (body.audio or AudioOutput()).voice_name, "audio.voice")
        own_seed = {stage for stage, values in omni.stage_sampling.items() if "seed" in values}
        omni.params.update(stage_params(client, talker, {"voice": voice, "choices": body.n}, body.seed, own_seed,
                                        offered={"unspoken_calls": body.calls_tools}))
    return omni, talker


async def _load_media(request: HTTPConnection, body: ChatCompletionRequest, refs: list[tuple[str, str, Any]],
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


def _choices(body: ChatCompletionRequest, speech: _Speech | None) -> list[Choice]:
    return [Choice(i, hold_text=body.calls_tools, speaks=speech is not None) for i in range(body.n)]


def _take(choices: list[Choice], out: OmniOutput, speech: _Speech | None) -> list[Piece]:
    """An output of the thinker or the talker, to its choice: the pieces due now."""
    choice = choices[out.index]
    if speech and out.stage == speech.stage:
        return choice.take_audio(speech.encode(out), out.text, bool(out.finish_reason))
    return choice.take(out)


def _finish_reason(reason: str, calls: list) -> str:
    return "tool_calls" if calls and reason == "stop" else reason


async def _collect(body: ChatCompletionRequest, head: Head, first: OmniOutput, stream: AsyncIterator[OmniOutput],
                   speech: _Speech | None, report: bool) -> ChatCompletion:
    """`report`: usage says how many prompt tokens came from the prefix cache (--enable-cache-report)."""
    choices = _choices(body, speech)
    prompt_tokens = first.prompt_tokens  # the thinker's; with audio, the talker's first output may come first
    async for out in stream:
        prompt_tokens = out.prompt_tokens or prompt_tokens
        _take(choices, out, speech)
    answers = []
    for c in choices:
        content, calls = parse_calls(c.full_text, body.tools) if body.calls_tools else (c.full_text, [])
        message = AnswerMessage(content=content, tool_calls=calls or None)
        if speech:
            message.audio = AnswerAudio(id=speech.ids.get(c.index) or new_id("audio"),
                                        data=base64.b64encode(c.audio).decode(), expires_at=now() + AUDIO_TTL_S,
                                        transcript=c.spoken_text if body.calls_tools else c.full_text)
        answers.append(ChatChoice(index=c.index, message=message, finish_reason=_finish_reason(c.finish_reason, calls),
                                  logprobs=ChatLogprobs.of(c.logprobs) if body.logprobs else None))
    return ChatCompletion(**head.fields, choices=answers,
                          usage=Usage.of(prompt_tokens, sum(c.completion_tokens for c in choices),
                                         choices[0].cached_tokens if report else None))


async def _chunks(body: ChatCompletionRequest, head: Head, first: OmniOutput, stream: AsyncIterator[OmniOutput],
                  speech: _Speech | None, report: bool) -> AsyncIterator[ChatCompletionChunk]:
    def chunk(index: int, delta: ChatDelta, finish_reason: str | None = None,
              logprobs: ChatLogprobs | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(**head.fields, choices=[ChunkChoice(index=index, delta=delta, logprobs=logprobs,
                                                                       finish_reason=finish_reason)])

    def render(choice: Choice, piece: Piece) -> Iterator[ChatCompletionChunk]:
        i = choice.index
        match piece:
            case TextPiece(text, logprobs):
                yield chunk(i, ChatDelta(content=text),
                            logprobs=ChatLogprobs.of(logprobs) if body.logprobs and logprobs else None)
            case AudioPiece(data, transcript, last):
                yield chunk(i, ChatDelta(audio=AnswerAudio(id=speech.ids[i], data=base64.b64encode(data).decode(),
                                                           transcript=transcript,
                                                           expires_at=now() + AUDIO_TTL_S if last else None)))
            case Ended(reason) if choice.hold_text:  # the text as OpenAI streams tool calls, or as content
                content, calls = parse_calls(choice.full_text, body.tools)
                if content:
                    yield chunk(i, ChatDelta(content=content))
                for k, call in enumerate(calls):  # per call: its id and name, then its arguments
                    function = call["function"]
                    yield chunk(i, ChatDelta(tool_calls=[ToolCallDelta(index=k, id=call["id"], type="function",
                                                                       function={"name": function["name"],
                                                                                 "arguments": ""})]))
                    yield chunk(i, ChatDelta(tool_calls=[ToolCallDelta(index=k,
                                                                       function={"arguments": function["arguments"]})]))
                yield chunk(i, ChatDelta(), finish_reason=_finish_reason(reason, calls))
            case Ended(reason):
                yield chunk(i, ChatDelta(), finish_reason=reason)

    choices = _choices(body, speech)
    prompt_tokens = first.prompt_tokens
    try:
        for choice in choices:
            yield chunk(choice.index, ChatDelta(role="assistant", content=""))
        async for out in stream:
            prompt_tokens = out.prompt_tokens or prompt_tokens
            for piece in _take(choices, out, speech):
                for each in render(choices[out.index], piece):
                    yield each
        if body.include_usage:
            yield ChatCompletionChunk(**head.fields, choices=[],
                                      usage=Usage.of(prompt_tokens, sum(c.completion_tokens for c in choices),
                                                     choices[0].cached_tokens if report else None))
    finally:
        await stream.aclose()  # on disconnect this aborts the request in the pipeline
