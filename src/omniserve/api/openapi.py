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

from omniserve.api.protocol import audio, chat, completions, embeddings, images, models, videos
from omniserve.api.protocol.common import ErrorResponse
from omniserve.api.protocol.lora import LoadLoraRequest, LoraNameRequest, SetLoraRequest, UnloadLoraRequest

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


OPERATIONS = (
    Operation("post", "/v1/chat/completions", {JSON: chat.ChatCompletionRequest},
              {JSON: chat.ChatCompletion, SSE: chat.ChatCompletionChunk}),
    Operation("post", "/v1/completions", {JSON: completions.CompletionRequest},
              {JSON: completions.Completion, SSE: completions.Completion}),
    Operation("post", "/v1/embeddings", {JSON: embeddings.EmbeddingRequest}, {JSON: embeddings.EmbeddingList}),
    Operation("post", "/v1/audio/speech", {JSON: audio.SpeechRequest},
              {**dict.fromkeys(AUDIO), SSE: (audio.SpeechChunk, audio.SpeechEvent)}),
    Operation("post", "/v1/audio/transcriptions", {MULTIPART: audio.TranscriptionUpload},
              {JSON: (audio.TranscriptionVerbose, audio.Transcription), "text/plain": None, "text/vtt": None,
               SSE: audio.TranscriptEvent}),
    Operation("post", "/v1/audio/translations", {MULTIPART: audio.TranscriptionUpload},
              {JSON: (audio.TranscriptionVerbose, audio.Transcription), "text/plain": None, "text/vtt": None}),
    Operation("get", "/v1/audio/voices", ok={JSON: audio.VoiceList}),
    Operation("post", "/v1/images/generations", {JSON: images.ImageGenerationRequest},
              {JSON: images.ImagesResponse}),
    Operation("post", "/v1/images/edits", {MULTIPART: images.ImageEditUpload, JSON: images.ImageEditRequest},
              {JSON: images.ImagesResponse}),
    *(Operation("post", path, {JSON: videos.VideoRequest, MULTIPART: videos.VideoUpload}, {JSON: videos.Video})
      for path in ("/v1/videos", "/v1/videos/generations", "/v1/videos/sync")),
    Operation("get", "/v1/videos", ok={JSON: videos.VideoList}),
    Operation("get", "/v1/videos/{video_id}", ok={JSON: videos.Video}),
    Operation("get", "/v1/videos/{video_id}/content", ok={"video/mp4": None}),
    Operation("delete", "/v1/videos/{video_id}", ok={JSON: videos.DeletedVideo}),
    Operation("get", "/v1/models", ok={JSON: models.ModelList}),
    Operation("get", "/v1/models/{model_id}", ok={JSON: models.ModelCard}),
    Operation("post", "/v1/load_lora_adapter", {JSON: LoadLoraRequest}, {JSON: models.LoraAdapters}),
    Operation("post", "/v1/unload_lora_adapter", {JSON: UnloadLoraRequest}, {JSON: models.LoraAdapters}),
    Operation("post", "/v1/set_lora", {JSON: SetLoraRequest}, {JSON: models.DiffusionLoras}),
    *(Operation("post", path, {JSON: LoraNameRequest}, {JSON: models.DiffusionLoras}, body_required=False)
      for path in ("/v1/merge_lora_weights", "/v1/unmerge_lora_weights")),
    Operation("get", "/v1/list_loras", ok={JSON: models.DiffusionLoras}),
    Operation("get", "/health", ok={JSON: models.Health}),
    Operation("get", "/get_load", ok={JSON: models.Load}),
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
            app.openapi_schema = describe(get_openapi(title=app.title, version=app.version, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def describe(spec: dict[str, Any]) -> dict[str, Any]:
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
            "200": {"description": "OK", "content": {kind: _media(kind, _schema(refs, answer))
                                                      for kind, answer in op.ok.items()}},
            "4XX": error, "5XX": error,
        }
    for path in spec["paths"].values():  # routes outside the table answer errors the same way (never a 422)
        for operation in path.values():
            operation["responses"].pop("422", None)
            operation["responses"].setdefault("4XX", error)
            operation["responses"].setdefault("5XX", error)
    for unused in ("HTTPValidationError", "ValidationError"):
        spec["components"]["schemas"].pop(unused, None)
    return spec


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
