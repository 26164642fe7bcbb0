"""`/v1/audio/speech`, `/v1/audio/transcriptions`, `/v1/audio/translations`
and `/v1/audio/voices`: validate -> OmniRequest routed to one speech stage
-> audio bytes, text, or SSE events."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile

from omniserve.api.media import decode_audio_bytes
from omniserve.api.protocol.audio import (
    CustomVoiceEntry,
    DurationUsage,
    SpeechChunk,
    SpeechChunkAudio,
    SpeechEvent,
    SpeechRequest,
    SpeechUsage,
    TranscriptEvent,
    Transcription,
    TranscriptionForm,
    TranscriptionVerbose,
    Voice,
    VoiceList,
)
from omniserve.api.protocol.common import validate_fields
from omniserve.api.routes.common import (
    get_client,
    model_response,
    new_id,
    read_json,
    resolve_model,
    stage_params,
    start,
    until_disconnect,
)
from omniserve.api.speakers import Speakers, speakers, voice_names
from omniserve.api.sse import SSE_HEADERS, sse_stream
from omniserve.errors import InvalidRequest
from omniserve.media.audio import AudioEncoder, encode_audio, output_format
from omniserve.runtime.facts import VoiceDetail
from omniserve.runtime.types import MediaReading, OmniOutput, OmniRequest
from omniserve.voices import OPENAI_VOICES

router = APIRouter()


# ---- text to speech --------------------------------------------------------------------


@router.post("/v1/audio/speech")
async def create_speech(request: Request):
    body = await read_json(request, SpeechRequest)
    client = get_client(request)
    voices = Speakers.of(request)
    model = resolve_model(client, body.model, "tts") if body.model is not None else voices.pick(body.voice)
    if model is None:
        resolve_model(client, None, "tts")  # the 400: no voice model is served
    params = {"voice": voices.resolve(model, body.voice), "speed": body.speed, "language": body.language,
              "noise_scale": body.noise_scale, "noise_w_scale": body.noise_w_scale}
    params = {k: v for k, v in params.items() if v is not None and (k != "language" or v.lower() != "auto")}
    # an omni checkpoint reads the text aloud through all its stages, from the thinker
    omni = OmniRequest(new_id("speech"), prompt=body.input, entry=model.entry, output_modalities=["audio"],
                       params=stage_params(client, model, params, body.seed))
    _, stream = await start(request, client, omni)
    rate = model.facts.sample_rate
    encoder = AudioEncoder(body.response_format, rate)
    headers = {"X-Sample-Rate": str(rate)}
    media_type = encoder.format.media_type
    if body.stream_format == "sse":
        events = _speech_events(stream, encoder, len(body.input))
        return StreamingResponse(sse_stream(events, done=False), media_type="text/event-stream",
                                 headers={**SSE_HEADERS, **headers})
    if body.stream_format == "audio":
        return StreamingResponse(_audio_bytes(stream, encoder), media_type=media_type, headers=headers)
    if body.stream:  # sglang-omni's and vLLM-Omni's shape: one self-contained audio file per event
        events = _speech_chunks(omni.request_id, stream, body.response_format, rate, len(body.input))
        return StreamingResponse(sse_stream(events), media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
    pcm = await until_disconnect(request, _collect_pcm(stream))
    return Response(encode_audio(pcm, rate, body.response_format), media_type=media_type, headers=headers)


async def _collect_pcm(stream: AsyncIterator[OmniOutput]) -> bytes:
    return b"".join([out.audio async for out in stream])


async def _audio_bytes(stream: AsyncIterator[OmniOutput], encoder: AudioEncoder) -> AsyncIterator[bytes]:
    """Encoded audio as each sentence is spoken. A failure can only end the body early."""
    try:
        async for out in stream:
            if data := encoder.write(out.audio):
                yield data
        if tail := encoder.close():
            yield tail
    finally:
        await stream.aclose()  # on disconnect this aborts the request in the pipeline


async def _speech_events(stream: AsyncIterator[OmniOutput], encoder: AudioEncoder,
                         characters: int) -> AsyncIterator[SpeechEvent]:
    try:
        async for out in stream:
            if data := encoder.write(out.audio):
                yield SpeechEvent(type="speech.audio.delta", audio=base64.b64encode(data).decode())
        if tail := encoder.close():
            yield SpeechEvent(type="speech.audio.delta", audio=base64.b64encode(tail).decode())
        yield SpeechEvent(type="speech.audio.done", usage=SpeechUsage.of(characters))
    finally:
        await stream.aclose()


async def _speech_chunks(request_id: str, stream: AsyncIterator[OmniOutput], fmt: str, rate: int,
                         characters: int) -> AsyncIterator[SpeechChunk]:
    """`audio.speech.chunk` events, each sentence's audio a whole file in `fmt` (playable alone),
    then one with `finish_reason` and usage; `sse_stream` ends them with [DONE]."""
    index = 0
    mime_type = output_format(fmt, "response_format").media_type
    try:
        async for out in stream:
            if out.audio:
                data = base64.b64encode(encode_audio(out.audio, rate, fmt)).decode()
                yield SpeechChunk(id=request_id, object="audio.speech.chunk", index=index, finish_reason=None,
                                  audio=SpeechChunkAudio(data=data, format=fmt, mime_type=mime_type, sample_rate=rate))
                index += 1
        yield SpeechChunk(id=request_id, object="audio.speech.chunk", index=index, audio=None, finish_reason="stop",
                          usage=SpeechUsage.of(characters))
    finally:
        await stream.aclose()


@router.get("/v1/audio/voices")
async def list_voices(request: Request) -> Response:
    """Every voice of every voice model: its model, language and gender, and the OpenAI names that speak
    with it; then the custom voices (of the voice library), which a model that clones speaks."""
    voices: list[Voice | CustomVoiceEntry] = []
    for model in speakers(get_client(request)):
        names = voice_names(model)
        openai = model.facts.openai_voices or dict.fromkeys(OPENAI_VOICES, names[0] if names else None)
        details = model.facts.voice_details or {}
        for i, name in enumerate(names):
            detail = details.get(name, VoiceDetail())
            voices.append(Voice(
                id=name, object="voice", model=model.id, sample_rate=model.facts.sample_rate,
                language=detail.language, gender=detail.gender,
                default=i == 0, aliases=[alias for alias, target in openai.items() if target == name]))
    for custom in request.app.state.voice_library.voices() if request.app.state.voice_library else []:
        consent = request.app.state.voice_library.consent(custom.consent)
        voices.append(CustomVoiceEntry(id=custom.id, object="audio.voice", name=custom.name,
                                       created_at=custom.created_at, model=None,
                                       language=consent.language if consent else None, gender=None,
                                       consent=custom.consent, enabled=not custom.disabled))
    return model_response(VoiceList(object="list", data=voices, voices=[v.id for v in voices]))


# ---- speech to text --------------------------------------------------------------------


@router.post("/v1/audio/transcriptions")
async def create_transcription(request: Request):
    return await _speech_to_text(request, "transcribe")


@router.post("/v1/audio/translations")
async def create_translation(request: Request):
    return await _speech_to_text(request, "translate")


async def _speech_to_text(request: Request, task: str):
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("send the audio as multipart/form-data with a `file` field")
    async with request.form() as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("file: this parameter is required (an audio file upload)", param="file")
        fields: dict[str, Any] = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        granularities = form.getlist("timestamp_granularities[]") or form.getlist("timestamp_granularities")
        if granularities:
            fields["timestamp_granularities"] = granularities
        body = validate_fields(fields, TranscriptionForm)
        client = get_client(request)
        model = resolve_model(client, body.model, "asr")
        if task == "translate" and not model.facts.multilingual:
            raise InvalidRequest(f"model `{model.id}` is English-only and cannot translate; serve a multilingual "
                                 "Whisper model with --asr-model", param="model")
        audio = await decode_audio_bytes(request, await upload.read(), "file")
    params = {"task": task, "language": body.language, "prompt": body.prompt, "temperature": body.temperature,
              "word_timestamps": "word" in body.timestamp_granularities, "segments": True}
    omni = OmniRequest(new_id("transcription"), audios=[audio], entry=model.entry, params={model.stage: params})
    _, stream = await start(request, client, omni)
    if body.stream:
        return StreamingResponse(sse_stream(_transcript_events(stream), done=False), media_type="text/event-stream",
                                 headers=SSE_HEADERS)
    segments, reading = await until_disconnect(request, _collect_segments(stream))
    return _transcript_response(body, task, segments, reading)


async def _collect_segments(stream: AsyncIterator[OmniOutput]) -> tuple[list[dict[str, Any]], MediaReading]:
    segments, reading = [], MediaReading("audio")
    async for out in stream:
        segments += out.segments
        if isinstance(out.data, MediaReading):
            reading = out.data
    return segments, reading


async def _transcript_events(stream: AsyncIterator[OmniOutput]) -> AsyncIterator[TranscriptEvent]:
    """Deltas that add up to the final text (Whisper starts each segment with a space: not the first)."""
    said = False
    try:
        async for out in stream:
            delta = out.text if said else out.text.lstrip()
            if delta:
                said = True
                yield TranscriptEvent(type="transcript.text.delta", delta=delta)
            if out.finish_reason:
                reading = out.data if isinstance(out.data, MediaReading) else MediaReading("audio")
                yield TranscriptEvent(type="transcript.text.done", text=reading.text, usage=_duration(reading))
    finally:
        await stream.aclose()


def _transcript_response(body: TranscriptionForm, task: str, segments: list[dict[str, Any]],
                         reading: MediaReading) -> Response:
    text = "".join(s["text"] for s in segments).strip()
    fmt = body.response_format
    if fmt == "text":
        return PlainTextResponse(text + "\n")
    if fmt in ("srt", "vtt"):
        return PlainTextResponse(_subtitles(segments, fmt), media_type="text/vtt" if fmt == "vtt" else "text/plain")
    usage = _duration(reading)
    if fmt == "json":
        return model_response(Transcription(text=text, usage=usage))
    grains = body.timestamp_granularities
    return model_response(TranscriptionVerbose(
        task=task, language=_language_name(reading.language), duration=usage.seconds, text=text, usage=usage,
        segments=[{k: v for k, v in s.items() if k != "words"} for s in segments] if "segment" in grains else None,
        words=[w for s in segments for w in s.get("words", [])] if "word" in grains else None))


def _duration(reading: MediaReading) -> DurationUsage:
    return DurationUsage(type="duration", seconds=round(reading.duration or 0.0, 3))


def _subtitles(segments: list[dict[str, Any]], fmt: str) -> str:
    sep = "." if fmt == "vtt" else ","

    def stamp(t: float) -> str:
        ms = int(round(t * 1000))
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"

    cues = []
    for i, s in enumerate(segments, 1):
        cue = f"{stamp(s['start'])} --> {stamp(s['end'])}\n{s['text'].strip()}\n"
        cues.append(cue if fmt == "vtt" else f"{i}\n{cue}")
    return ("WEBVTT\n\n" if fmt == "vtt" else "") + "\n".join(cues)


_LANGUAGES = {"en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian", "zh": "chinese",
              "ja": "japanese", "pt": "portuguese", "ru": "russian", "nl": "dutch"}


def _language_name(code: str | None) -> str:
    """verbose_json names the language in full, as OpenAI does."""
    return _LANGUAGES.get(code or "", code or "")
