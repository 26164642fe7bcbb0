"""What routes need from `omniserve.media`: media references (URLs, data
URLs, base64 objects, file paths) turned into decoded audio, images and
video frames under the server's limits.

Decoding is CPU work, so it runs in a thread and the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from starlette.requests import HTTPConnection

from omniserve.errors import InvalidRequest, PayloadTooLarge
from omniserve.media.audio import decode_audio
from omniserve.media.images import decode_image
from omniserve.media.inputs import Fetched, MediaLimits, decode_base64, fetch
from omniserve.media.video import VideoClip, decode_video

# The MIME types a declared type must match for each kind of input (None or octet-stream: not declared).
_ACCEPTED_MIME = {
    "audio": ("audio/", "video/"),
    "image": ("image/",),
    "video": ("video/", "image/gif"),
}


def media_limits(request: HTTPConnection) -> MediaLimits:
    settings = request.app.state.settings
    return MediaLimits(max_bytes=settings.max_media_bytes, allow_private_urls=settings.allow_private_media_urls,
                       local_root=settings.allowed_local_media_path, deadline_s=settings.media_fetch_timeout,
                       timeout_s=min(10.0, settings.media_fetch_timeout))


async def fetch_media(request: HTTPConnection, ref: Any, where: str, kind: str) -> bytes:
    """A URL string or `{url}` object (or, for audio, `{data, format}`) -> bytes whose declared type fits `kind`."""
    if kind == "audio" and isinstance(ref, dict) and "data" in ref:
        if not isinstance(ref["data"], str):
            raise InvalidRequest(f"{where}.data: must be a base64 string", param=f"{where}.data")
        return decode_base64(ref["data"], f"{where}.data")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        shape = '{"data": base64, "format": ...}' if kind == "audio" else '{"url": ...}'
        raise InvalidRequest(f"{where}: give a URL string or {shape}", param=where)
    fetched = await fetch(url, where, media_limits(request))
    _check_mime(fetched, kind, where)
    return fetched.data


def _check_mime(fetched: Fetched, kind: str, where: str) -> None:
    mime = fetched.mime
    if mime in (None, "application/octet-stream") or mime.startswith(_ACCEPTED_MIME[kind]):
        return
    raise InvalidRequest(f"{where}: expected {kind} but the data is declared as {mime!r}", param=where)


async def load_image(request: HTTPConnection, ref: Any, where: str, alpha: bool = False) -> np.ndarray:
    data = await fetch_media(request, ref, where, "image")
    max_pixels = request.app.state.settings.max_image_pixels
    return await asyncio.to_thread(decode_image, data, where=where, max_pixels=max_pixels, alpha=alpha)


async def decode_uploaded_image(request: HTTPConnection, upload: Any, where: str, alpha: bool = False) -> np.ndarray:
    """An uploaded image file (multipart) -> pixels, under the same limits as any image input."""
    data = await upload.read()
    settings = request.app.state.settings
    if len(data) > settings.max_media_bytes:
        raise PayloadTooLarge(f"{where}: the file is larger than {settings.max_media_bytes} bytes", param=where)
    return await asyncio.to_thread(decode_image, data, where=where, max_pixels=settings.max_image_pixels,
                                   alpha=alpha)


async def load_video(request: HTTPConnection, ref: Any, where: str, fps: float, max_frames: int,
                     with_audio: bool) -> VideoClip:
    data = await fetch_media(request, ref, where, "video")
    settings = request.app.state.settings
    return await asyncio.to_thread(
        decode_video, data, where=where, fps=fps, max_frames=max_frames, max_seconds=settings.max_video_seconds,
        max_pixels=settings.max_image_pixels, with_audio=with_audio, max_audio_seconds=settings.max_audio_seconds)


async def decode_audio_bytes(request: HTTPConnection, data: bytes, where: str) -> np.ndarray:
    max_seconds = request.app.state.settings.max_audio_seconds
    return await asyncio.to_thread(decode_audio, data, where=where, max_seconds=max_seconds)


async def load_audio(request: HTTPConnection, ref: dict[str, Any] | str, where: str) -> np.ndarray:
    """An `input_audio` object ({data: base64, format}) or an `audio_url` -> samples."""
    return await decode_audio_bytes(request, await fetch_media(request, ref, where, "audio"), where)
