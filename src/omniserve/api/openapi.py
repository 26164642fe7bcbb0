"""What `/openapi.json` says each route takes and answers.

The main routes read their own bodies (`parse_body`: depth, surrogates, `extra_body`, errors
that name the parameter), so FastAPI cannot see their models. This table gives each route its
request body (JSON or multipart, by the same pydantic models the routes validate with) and
its responses (JSON, SSE events, audio or video bytes, and the error envelope), so Swagger UI
at /docs, generated clients and API fuzzers can use the spec. The schemas go into
`components/schemas`; the fuzz tests check that real responses match them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from omniserve.api.protocol import audio, chat, completions, embeddings, images, models, videos, voice_library
from omniserve.api.protocol.common import ErrorResponse
from omniserve.api.protocol.lora import LoadLoraRequest, LoraNameRequest, SetLoraRequest, UnloadLoraRequest
from omniserve.api.realtime.events import ClientSecretOut
from omniserve.api.realtime.protocol import ClientSecretRequest, RealtimeCallUpload
from omniserve.runtime.client import ServedModel
from omniserve.voices import OPENAI_VOICES

JSON = "application/json"
SSE = "text/event-stream"
MULTIPART = "multipart/form-data"
AUDIO = ("audio/mpeg", "audio/wav", "audio/flac", "audio/ogg", "audio/aac", "audio/pcm")


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    body: dict[str, type[BaseModel]] = field(default_factory=dict)  # media type -> request model
    # media type -> response: a model, several (any of them), or None for bytes
    ok: dict[str, type[BaseModel] | tuple[type[BaseModel], ...] | None] = field(default_factory=dict)
    body_required: bool = True
    # the served-model fact the operation needs (a `StageFacts` field true for some served model): without it the
    # spec leaves the operation out, since every request to it would be refused
    needs: str | None = None
    # the kinds of served model its `model` names: the spec lists them (a request naming another is refused)
    kinds: tuple[str, ...] = ()
    status: str = "200"  # the answer's status when it is done


OPERATIONS = (
    Operation("post", "/v1/chat/completions", {JSON: chat.ChatCompletionRequest},
              {JSON: chat.ChatCompletion, SSE: chat.ChatCompletionChunk}, kinds=("chat", "image")),
    Operation("post", "/v1/completions", {JSON: completions.CompletionRequest},
              {JSON: completions.Completion, SSE: completions.Completion}, kinds=("chat",)),
    Operation("post", "/v1/embeddings", {JSON: embeddings.EmbeddingRequest}, {JSON: embeddings.EmbeddingList},
              kinds=("embedding", "chat")),
    Operation("post", "/v1/audio/speech", {JSON: audio.SpeechRequest},
              {**dict.fromkeys(AUDIO), SSE: (audio.SpeechChunk, audio.SpeechEvent)}, kinds=("tts",)),
    Operation("post", "/v1/audio/transcriptions", {MULTIPART: audio.TranscriptionUpload},
              {JSON: (audio.TranscriptionVerbose, audio.Transcription), "text/plain": None, "text/vtt": None,
               SSE: audio.TranscriptEvent}, kinds=("asr",)),
    Operation("post", "/v1/audio/translations", {MULTIPART: audio.TranscriptionUpload},
              {JSON: (audio.TranscriptionVerbose, audio.Transcription), "text/plain": None, "text/vtt": None},
              needs="multilingual", kinds=("asr",)),
    Operation("get", "/v1/audio/voices", ok={JSON: audio.VoiceList}),
    Operation("post", "/v1/audio/voice_consents", {MULTIPART: voice_library.ConsentUpload},
              {JSON: voice_library.VoiceConsent}, needs="speaker_embeddings"),
    Operation("get", "/v1/audio/voice_consents", ok={JSON: voice_library.VoiceConsentList}),
    Operation("get", "/v1/audio/voice_consents/{consent_id}", ok={JSON: voice_library.VoiceConsent}),
    Operation("post", "/v1/audio/voice_consents/{consent_id}", {JSON: voice_library.ConsentRename},
              {JSON: voice_library.VoiceConsent}),
    Operation("delete", "/v1/audio/voice_consents/{consent_id}", ok={JSON: voice_library.VoiceConsentDeleted}),
    Operation("post", "/v1/audio/voices", {MULTIPART: voice_library.VoiceUpload}, {JSON: voice_library.CustomVoice},
              needs="speaker_embeddings"),
    Operation("post", "/v1/audio/voice/upload", {MULTIPART: voice_library.VoiceUpload},
              {JSON: voice_library.VoiceUploaded}, needs="speaker_embeddings"),
    Operation("get", "/v1/audio/voices/{voice_id}", ok={JSON: voice_library.CustomVoice}),
    Operation("delete", "/v1/audio/voices/{voice_id}", ok={JSON: voice_library.CustomVoiceDeleted}),
    Operation("post", "/v1/images/generations", {JSON: images.ImageGenerationRequest},
              {JSON: images.ImagesResponse}, kinds=("image",)),
    Operation("post", "/v1/images/edits", {MULTIPART: images.ImageEditUpload, JSON: images.ImageEditRequest},
              {JSON: images.ImagesResponse}, needs="edits", kinds=("image",)),
    *(Operation("post", path, {JSON: videos.VideoRequest, MULTIPART: videos.VideoUpload}, {JSON: videos.Video},
                needs="videos", kinds=("image",))
      for path in ("/v1/videos", "/v1/videos/generations", "/v1/videos/sync")),
    Operation("get", "/v1/videos", ok={JSON: videos.VideoList}),
    Operation("get", "/v1/videos/{video_id}", ok={JSON: videos.Video}),
    Operation("get", "/v1/videos/{video_id}/content", ok={"video/mp4": None}),
    Operation("delete", "/v1/videos/{video_id}", ok={JSON: videos.DeletedVideo}),
    Operation("get", "/v1/models", ok={JSON: models.ModelList}),
    Operation("get", "/v1/models/{model_id}", ok={JSON: models.ModelCard}),
    Operation("post", "/v1/load_lora_adapter", {JSON: LoadLoraRequest}, {JSON: models.LoraAdapters}),
    Operation("post", "/v1/unload_lora_adapter", {JSON: UnloadLoraRequest}, {JSON: models.LoraAdapters}),
    Operation("post", "/v1/set_lora", {JSON: SetLoraRequest}, {JSON: models.DiffusionLoras}, needs="lora"),
    *(Operation("post", path, {JSON: LoraNameRequest}, {JSON: models.DiffusionLoras}, body_required=False,
                needs="lora")
      for path in ("/v1/merge_lora_weights", "/v1/unmerge_lora_weights")),
    Operation("get", "/v1/list_loras", ok={JSON: models.DiffusionLoras}, needs="lora"),
    Operation("post", "/v1/realtime/client_secrets", {JSON: ClientSecretRequest}, {JSON: ClientSecretOut},
              body_required=False),
    Operation("post", "/v1/realtime/calls", {MULTIPART: RealtimeCallUpload},
              {"application/sdp": None}, status="201"),
    Operation("post", "/v1/realtime/calls/{call_id}/hangup"),
    Operation("get", "/health", ok={JSON: models.Health}),
    Operation("get", "/get_load", ok={JSON: models.Load}),
    Operation("get", "/get_model_info", ok={JSON: models.ModelInfo}),
    Operation("get", "/models", ok={JSON: images.ImageModelInfo}, needs="tasks"),  # an image model's
)


def methods_for(app: FastAPI, path: str) -> list[str]:
    """The methods the spec gives `path` (what a 405's `Allow` lists): a path written out wins over
    templates it also fits (`/v1/videos/sync` over `/v1/videos/{video_id}`); a parameter spans one
    path segment, or, failing that, a last one the rest (a model id may hold a slash)."""
    paths = app.openapi()["paths"]
    if path in paths:
        return sorted(method.upper() for method in paths[path])
    for rest in (False, True):
        found = {method.upper() for template, operations in paths.items() if _pattern(template, rest).fullmatch(path)
                 for method in operations}
        if found:
            return sorted(found)
    return []


def _pattern(template: str, rest: bool) -> re.Pattern[str]:
    parts = re.split(r"\{[^}]+\}", template)
    params = ["[^/]+"] * (len(parts) - 1)
    if rest and params and not parts[-1]:
        params[-1] = ".+"
    return re.compile("".join(re.escape(part) + param for part, param in zip(parts, params + [""], strict=True)))


def install(app: FastAPI) -> None:
    """Make `app.openapi()` (and so /openapi.json and /docs) describe every route's body and answers."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe(get_openapi(title=app.title, version=app.version, routes=app.routes),
                                          app.state.client.served_models)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def describe(spec: dict[str, Any], served: list[ServedModel] | None = None) -> dict[str, Any]:
    """The spec with every route's body and answers, as this server serves them (`served`: its models; None:
    any server's): the model names each operation takes, the voices, and only the operations its models can
    do."""
    wanted = {(m, "validation") for op in OPERATIONS for m in op.body.values()}
    wanted |= {(m, "serialization") for op in OPERATIONS for m in map(_models, op.ok.values()) for m in m}
    wanted.add((ErrorResponse, "serialization"))
    refs, defs = models_json_schema(sorted(wanted, key=lambda k: (k[0].__name__, k[1])),
                                    ref_template="#/components/schemas/{model}")
    spec.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
    error = {"description": "an error in OpenAI's envelope",
             "content": {JSON: {"schema": refs[(ErrorResponse, "serialization")]}}}
    for op in OPERATIONS:
        operation = spec["paths"][_spec_path(spec, op.path)][op.method]
        if op.body:
            operation["requestBody"] = {"required": op.body_required, "content": {
                kind: {"schema": refs[(model, "validation")]} for kind, model in op.body.items()}}
        operation["responses"] = {
            op.status: {"description": "OK", "content": {kind: _media(kind, _schema(refs, answer))
                                                         for kind, answer in op.ok.items()}},
            "4XX": error, "5XX": error,
        }
    schemas = spec["components"]["schemas"]
    if served is not None:
        _served_names(schemas, served)
    for op in OPERATIONS:  # a form field is sent or not: it cannot be null
        if MULTIPART in op.body:
            _no_nulls(schemas[op.body[MULTIPART].__name__])
    facts = None if served is None else {name for m in served for name, value in m.facts if value}
    for op in OPERATIONS:
        if op.needs and facts is not None and op.needs not in facts:
            del spec["paths"][op.path][op.method]
            if not spec["paths"][op.path]:
                del spec["paths"][op.path]
    for path in spec["paths"].values():  # routes outside the table answer errors the same way (never a 422)
        for operation in path.values():
            operation["responses"].pop("422", None)
            operation["responses"].setdefault("4XX", error)
            operation["responses"].setdefault("5XX", error)
    for unused in ("HTTPValidationError", "ValidationError"):
        spec["components"]["schemas"].pop(unused, None)
    return spec


def _served_names(schemas: dict[str, Any], served: list[ServedModel]) -> None:
    """Each body's `model` as the names this server serves for it, and the voices its talker speaks."""
    for op in OPERATIONS:
        names = sorted({name for m in served if m.kind in op.kinds for name in (m.id, *m.aliases)})
        if "embedding" in op.kinds and not any(m.kind == "embedding" for m in served):
            names += embeddings.OPENAI_EMBEDDING_NAMES  # the chat model embeds under them
        if "chat" in op.kinds:  # a chat model with one of its LoRA adapters
            names += [f"{m.id}:{a}" for m in served if m.kind == "chat" for a in m.facts.loras or {}]
        for model in op.body.values():
            props = schemas[model.__name__].get("properties", {})
            if op.kinds and "model" in props:
                props["model"] = {"anyOf": [{"enum": names}, {"type": "null"}], "default": None, "description":
                                  "a model this server serves for this route (GET /v1/models); none: its first"}
    voices = [v for m in served if m.kind == "tts" for v in m.facts.voices or []]
    if voices:
        voices += [v for v in OPENAI_VOICES if v not in voices]
        voice = {"anyOf": [{"enum": voices}, {"type": "object", "properties": {"id": {"enum": voices}},
                                              "required": ["id"]}, {"type": "null"}],
                 "default": None, "description": "a voice this server speaks (GET /v1/audio/voices), in any case"}
        for name in ("SpeechRequest", "AudioOutput"):
            if "voice" in schemas.get(name, {}).get("properties", {}):
                schemas[name]["properties"]["voice"] = voice


def _no_nulls(schema: dict[str, Any]) -> None:
    """A form's fields without their `null` alternatives."""
    for prop in schema.get("properties", {}).values():
        kinds = prop.get("anyOf")
        if kinds and {"type": "null"} in kinds:
            kinds.remove({"type": "null"})
            if len(kinds) == 1:
                prop.update(prop.pop("anyOf")[0])
            if prop.get("default", 0) is None:
                del prop["default"]


def _models(answer: Any) -> tuple[type[BaseModel], ...]:
    return answer if isinstance(answer, tuple) else (answer,) if answer is not None else ()


def _schema(refs: dict, answer: Any) -> dict[str, Any]:
    models = _models(answer)
    if not models:
        return {"type": "string", "format": "binary"}
    schemas = [refs[(m, "serialization")] for m in models]
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def _media(kind: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A media type object. An event stream is described per event (OpenAPI 3.2's `itemSchema`): its
    `data` is JSON of `schema`, or OpenAI's closing `[DONE]`."""
    if kind != SSE:
        return {"schema": schema}
    data = {"type": "string", "contentMediaType": JSON, "contentSchema": schema}
    return {"itemSchema": {"type": "object", "required": ["data"],
                           "properties": {"data": {"anyOf": [{"const": "[DONE]"}, data]}}}}


def _spec_path(spec: dict[str, Any], path: str) -> str:
    """`path` itself, checked to be a route (the table must not drift from the routes)."""
    if path not in spec["paths"]:
        raise KeyError(f"the OpenAPI table names {path}, which no route serves")
    return path
