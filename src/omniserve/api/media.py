"""What routes need from `omniserve.media`: audio references turned into
decoded samples under the server's limits, and voice names resolved.

Decoding is CPU work, so it runs in a thread and the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import Request

from omniserve.api.protocol.audio import OPENAI_VOICES
from omniserve.errors import InvalidRequest
from omniserve.media.audio import decode_audio
from omniserve.media.inputs import MediaLimits, decode_base64, fetch
from omniserve.runtime.client import ServedModel


def media_limits(request: Request) -> MediaLimits:
    settings = request.app.state.settings
    return MediaLimits(max_bytes=settings.max_media_bytes, allow_private_urls=settings.allow_private_media_urls)


async def decode_audio_bytes(request: Request, data: bytes, where: str) -> np.ndarray:
    max_seconds = request.app.state.settings.max_audio_seconds
    return await asyncio.to_thread(decode_audio, data, where=where, max_seconds=max_seconds)


async def load_audio(request: Request, ref: dict[str, Any] | str, where: str) -> np.ndarray:
    """An `input_audio` object ({data: base64, format}) or an `audio_url` (http(s) or data:) -> samples."""
    if isinstance(ref, dict) and "data" in ref:
        if not isinstance(ref["data"], str):
            raise InvalidRequest(f"{where}.data: must be a base64 string", param=f"{where}.data")
        data = decode_base64(ref["data"], f"{where}.data")
    else:
        url = ref.get("url") if isinstance(ref, dict) else ref
        if not isinstance(url, str):
            raise InvalidRequest(f"{where}: give a URL string or {{\"data\": base64, \"format\": ...}}", param=where)
        data = await fetch(url, where, media_limits(request))
    return await decode_audio_bytes(request, data, where)


def voice_names(model: ServedModel) -> list[str]:
    return list(model.info.get("voices", []))


def resolve_voice(model: ServedModel, voice: str | None, param: str = "voice") -> str:
    """An installed voice by name, or an OpenAI voice name (-> the default voice)."""
    installed = voice_names(model)
    if voice is None or voice in OPENAI_VOICES:
        return installed[0]
    if voice in installed:
        return voice
    valid = ", ".join(installed + list(OPENAI_VOICES))
    raise InvalidRequest(f"{param}: unknown voice {voice!r}; valid voices: {valid}", param=param)
