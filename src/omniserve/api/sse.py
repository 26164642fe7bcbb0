"""Server-sent events: framing, and errors that happen after the stream began."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from omniserve.api.errors import error_body, omni_error_body
from omniserve.errors import OmniError

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def event(payload: BaseModel | dict[str, Any]) -> bytes:
    if isinstance(payload, BaseModel):
        return b"data: " + payload.model_dump_json().encode() + b"\n\n"
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def sse_stream(chunks: AsyncIterator[BaseModel | dict[str, Any]], done: bool = True) -> AsyncIterator[bytes]:
    """Frame chunks; a failure mid-stream becomes an error event, then [DONE]
    (OpenAI's audio event streams end without [DONE]: `done=False`)."""
    try:
        async for chunk in chunks:
            yield event(chunk)
    except OmniError as exc:
        yield event(omni_error_body(exc))
    except Exception as exc:  # never leak a traceback into the stream
        log.exception("stream failed")
        yield event(error_body(f"internal server error ({type(exc).__name__})", "internal_error"))
    if done:
        yield DONE


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
