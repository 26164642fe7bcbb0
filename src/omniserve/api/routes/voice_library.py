"""The voice library: OpenAI's voice consents (`/v1/audio/voice_consents`) and custom voices
(`POST /v1/audio/voices`, `GET`/`DELETE /v1/audio/voices/{id}`), and vLLM-Omni's `POST /v1/audio/voice/upload`.

Consent is checked, not taken on trust: the recording is transcribed (the speech-to-text stage) and must say
the consent statement for its language, and a voice sample must be the consent's speaker (the speaker
stage's embeddings, compared by cosine). Each refusal is a 400 that says which check failed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from omniserve.api.media import decode_audio_bytes
from omniserve.api.protocol.common import validate_fields
from omniserve.api.protocol.voice_library import (
    CONSENT_SECONDS,
    MAX_UPLOAD_BYTES,
    SAMPLE_SECONDS,
    ConsentForm,
    ConsentRename,
    CustomVoice,
    CustomVoiceDeleted,
    UploadedVoice,
    VoiceConsent,
    VoiceConsentDeleted,
    VoiceConsentList,
    VoiceForm,
    VoiceUploaded,
)
from omniserve.api.routes.common import (
    get_client,
    model_response,
    new_id,
    read_json,
    stage_params,
    start,
    until_disconnect,
)
from omniserve.api.speakers import speakers, voice_names
from omniserve.errors import InvalidRequest, NotFound
from omniserve.runtime.client import Client, ServedModel
from omniserve.runtime.types import Embeddings, OmniRequest
from omniserve.voice_library import store
from omniserve.voice_library.consent import MIN_SAID, said_fraction, similarity, statement_for
from omniserve.voice_library.store import Consent, VoiceLibrary
from omniserve.voices import OPENAI_VOICES

router = APIRouter()


def library(request: Request) -> VoiceLibrary:
    return request.app.state.voice_library


async def _form(request: Request, file_field: str) -> tuple[dict[str, str], UploadFile]:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest(f"send multipart/form-data with a `{file_field}` file", param=file_field)
    form = await request.form()
    upload = form.get(file_field)
    if not isinstance(upload, UploadFile):
        raise InvalidRequest(f"{file_field}: this parameter is required (an audio file upload)", param=file_field)
    return {k: v for k, v in form.multi_items() if isinstance(v, str)}, upload


async def _audio(request: Request, upload: UploadFile, where: str,
                 seconds: tuple[float, float]) -> tuple[bytes, np.ndarray]:
    """The upload's bytes and its audio at 16 kHz, within the size and duration limits."""
    data = await upload.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidRequest(f"{where}: the file is larger than 10 MiB", param=where, code="file_too_large")
    audio = await decode_audio_bytes(request, data, where)
    duration = len(audio) / 16000
    if not seconds[0] <= duration <= seconds[1]:
        raise InvalidRequest(f"{where}: the audio is {duration:.1f} s long; it must be {seconds[0]:g} to "
                             f"{seconds[1]:g} s", param=where, code="audio_duration")
    return data, audio


def _suffix(upload: UploadFile) -> str:
    suffix = Path(upload.filename or "").suffix.lower()
    return suffix if suffix[1:].isalnum() and len(suffix) <= 6 else ".audio"


async def _transcribe(request: Request, client: Client, audio: np.ndarray, language: str, where: str) -> str:
    asr = client.model(None, "asr")
    if asr is None:
        raise InvalidRequest(f"{where}: checking consent needs a speech-to-text model (--asr-model)", param=where)
    code = language.split("-")[0].lower()
    if code != "en" and not asr.facts.multilingual:
        raise InvalidRequest(f"language: the speech-to-text model {asr.id} is English-only and cannot check a "
                             f"{language} consent; serve a multilingual Whisper with --asr-model", param="language")
    omni = OmniRequest(new_id("consent"), audios=[audio], entry=asr.entry,
                       params={asr.stage: {"task": "transcribe", "language": code}})
    _, stream = await start(request, client, omni)
    return "".join([out.text async for out in stream]).strip()


async def _speaker(request: Request, client: Client, audio: np.ndarray, where: str) -> np.ndarray:
    encoder = client.model(None, "speaker")
    if encoder is None:
        raise InvalidRequest(f"{where}: custom voices need the speaker encoder, which this server was started "
                             "without (--speaker-model none)", param=where)
    _, stream = await start(request, client, OmniRequest(new_id("speaker"), audios=[audio], entry=encoder.entry,
                                                         output_modalities=["embedding"]))
    vectors = [out.data.vectors[0] async for out in stream if isinstance(out.data, Embeddings)]
    return vectors[0]


# ---- consents ----------------------------------------------------------------------------------------------

@router.post("/v1/audio/voice_consents")
async def create_consent(request: Request) -> Response:
    fields, upload = await _form(request, "recording")
    body = validate_fields(fields, ConsentForm)
    statement = statement_for(body.language)
    if statement is None:
        raise InvalidRequest(f"language: no consent statement for {body.language!r}; consent may be given in "
                             "en, es, fr, de, it, pt", param="language")
    data, audio = await _audio(request, upload, "recording", CONSENT_SECONDS)
    client = get_client(request)
    transcript, embedding = await until_disconnect(request, asyncio.gather(
        _transcribe(request, client, audio, body.language, "recording"), _speaker(request, client, audio,
                                                                                  "recording")))
    said = said_fraction(transcript, statement)
    if said < MIN_SAID:
        raise InvalidRequest(f"recording: it does not say the consent statement for {body.language}: "
                             f"\"{statement}\" (heard: \"{transcript[:300]}\"; {said:.0%} of its words, "
                             f"{MIN_SAID:.0%} needed)", param="recording", code="consent_statement_not_said")
    consent = await asyncio.to_thread(library(request).add_consent, body.name, body.language, data,
                                      _suffix(upload), transcript, embedding)
    return model_response(consent_model(consent))


@router.get("/v1/audio/voice_consents")
async def list_consents(request: Request, after: str | None = Query(None, max_length=64),
                        limit: int = Query(20, ge=1, le=100)) -> Response:
    try:
        page, more = library(request).consents(after, limit)
    except KeyError:
        raise NotFound(f"after: no voice consent {after!r}", param="after", code="consent_not_found") from None
    return model_response(VoiceConsentList(object="list", data=[consent_model(c) for c in page],
                                           first_id=page[0].id if page else None,
                                           last_id=page[-1].id if page else None, has_more=more))


def consent_model(consent: Consent) -> VoiceConsent:
    """OpenAI's `audio.voice_consent`."""
    return VoiceConsent(object="audio.voice_consent", id=consent.id, name=consent.name, language=consent.language,
                        created_at=consent.created_at)


def voice_model(voice: store.CustomVoice) -> CustomVoice:
    """OpenAI's `audio.voice`."""
    return CustomVoice(object="audio.voice", id=voice.id, name=voice.name, created_at=voice.created_at)


def _consent(request: Request, consent_id: str) -> Consent:
    consent = library(request).consent(consent_id)
    if consent is None:
        raise NotFound(f"no voice consent {consent_id!r}", param="consent_id", code="consent_not_found")
    return consent


@router.get("/v1/audio/voice_consents/{consent_id}")
async def get_consent(request: Request, consent_id: str) -> Response:
    return model_response(consent_model(_consent(request, consent_id)))


@router.post("/v1/audio/voice_consents/{consent_id}")
async def rename_consent(request: Request, consent_id: str) -> Response:
    _consent(request, consent_id)
    body = await read_json(request, ConsentRename)
    return model_response(consent_model(library(request).rename_consent(consent_id, body.name)))


@router.delete("/v1/audio/voice_consents/{consent_id}")
async def delete_consent(request: Request, consent_id: str) -> Response:
    """The consent and its recording go; the voices made under it stop working."""
    _consent(request, consent_id)
    await asyncio.to_thread(library(request).delete_consent, consent_id)
    return model_response(VoiceConsentDeleted(id=consent_id, object="audio.voice_consent", deleted=True))


# ---- voices ------------------------------------------------------------------------------------------------

async def _create_voice(request: Request) -> Any:
    fields, upload = await _form(request, "audio_sample")
    body = validate_fields(fields, VoiceForm)
    client = get_client(request)
    builtin = {n.lower() for m in speakers(client) for n in voice_names(m)} | set(OPENAI_VOICES)
    if body.name.lower() in builtin or body.name.startswith("voice_"):
        raise InvalidRequest(f"name: {body.name!r} names a built-in voice or looks like a voice id; give another",
                             param="name")
    consent = library(request).consent(body.consent)
    if consent is None:
        raise InvalidRequest(f"consent: no voice consent {body.consent!r}; make one with POST "
                             "/v1/audio/voice_consents", param="consent", code="consent_not_found")
    data, audio = await _audio(request, upload, "audio_sample", SAMPLE_SECONDS)
    jobs = [_speaker(request, client, audio, "audio_sample")]
    if body.ref_text is None:
        jobs.append(_transcribe(request, client, audio, consent.language, "audio_sample"))
    embedding, *heard = await until_disconnect(request, asyncio.gather(*jobs))
    match = similarity(embedding, consent.embedding)
    threshold = request.app.state.settings.voice_match_threshold
    if match < threshold:
        raise InvalidRequest(f"audio_sample: it is not the speaker of consent {consent.id} (speaker similarity "
                             f"{match:.2f}; {threshold:.2f} needed)", param="audio_sample", code="speaker_mismatch")
    try:
        voice = await asyncio.to_thread(library(request).add_voice, body.name, consent, data, _suffix(upload),
                                        body.ref_text if body.ref_text is not None else heard[0], embedding, match)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="name" if "named" in str(exc) else "consent") from None
    await until_disconnect(request, asyncio.gather(*(_prepare(request, client, model, voice.id)
                                                     for model in speakers(client) if model.facts.clones)))
    return voice


async def _prepare(request: Request, client: Client, model: ServedModel, voice_id: str) -> None:
    """A model that clones encodes the new voice's sample now, once (it keeps what it made): an empty text
    in the voice is all it takes."""
    omni = OmniRequest(new_id("voice"), prompt="", entry=model.entry, output_modalities=["audio"],
                       params=stage_params(client, model, {"voice": voice_id}))
    _, stream = await start(request, client, omni)
    async for _ in stream:
        pass


@router.post("/v1/audio/voices")
async def create_voice(request: Request) -> Response:
    return model_response(voice_model(await _create_voice(request)))


@router.post("/v1/audio/voice/upload")
async def upload_voice(request: Request) -> Response:
    """vLLM-Omni's shape: the same form, answered with `{"success": true, "voice": {...}}`."""
    voice = await _create_voice(request)
    path = library(request).path(voice.sample)
    return model_response(VoiceUploaded(success=True, voice=UploadedVoice(
        id=voice.id, name=voice.name, consent=voice.consent, created_at=voice.created_at,
        file_size=path.stat().st_size, ref_text=voice.ref_text)))


def _voice(request: Request, voice_id: str) -> store.CustomVoice:
    voice = library(request).voice(voice_id)
    if voice is None:
        raise NotFound(f"no custom voice {voice_id!r}", param="voice_id", code="voice_not_found")
    return voice


@router.get("/v1/audio/voices/{voice_id}")
async def get_voice(request: Request, voice_id: str) -> Response:
    return model_response(voice_model(_voice(request, voice_id)))


@router.delete("/v1/audio/voices/{voice_id}")
async def delete_voice(request: Request, voice_id: str) -> Response:
    """By id, or (as vLLM-Omni deletes) by name."""
    voice = _voice(request, voice_id)
    await asyncio.to_thread(library(request).delete_voice, voice.id)
    return model_response(CustomVoiceDeleted(id=voice.id, object="audio.voice", deleted=True))
