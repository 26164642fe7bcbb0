"""What carries a realtime session's events: a WebSocket (`/v1/realtime`), or a WebRTC call's `oai-events`
data channel (`/v1/realtime/calls`, api/realtime/webrtc.py). The connection reads and writes through this
and does not know which."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

from fastapi import WebSocket, WebSocketDisconnect

from omniserve.media.pcm import PcmFormat


class Transport(Protocol):
    async def receive(self) -> str | bytes | None:
        """The client's next message (an event is text), or None once it has gone."""

    async def send(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None:
        """End the session from the server's side (it may be closing already)."""


@dataclass
class Cut:
    """An answer stopped while it played: how much of it had played."""

    response_id: str
    played_ms: int


class AudioOut(Protocol):
    """Where the answers' audio plays when it does not go in events: a WebRTC call's track."""

    def play(self, response_id: str, audio: bytes, fmt: PcmFormat) -> None:
        """Queue a chunk of a response's audio (in the session's output format) to play after what is queued."""

    def finish(self, response_id: str) -> None:
        """The response is done: once its audio has played, say so."""

    def clear(self) -> Cut | None:
        """Stop at once: what is queued is dropped, and the rest of the response's audio when it comes. The
        response that was playing or waiting to, if any."""


class WebSocketTransport:
    def __init__(self, ws: WebSocket):
        self.ws = ws

    async def receive(self) -> str | bytes | None:
        try:
            message = await self.ws.receive()
        except WebSocketDisconnect:
            return None
        except RuntimeError:  # the socket was closed under the handler (the client left, or idle)
            return None
        if message["type"] == "websocket.disconnect":
            return None
        return message["text"] if message.get("text") is not None else message.get("bytes") or b""

    async def send(self, text: str) -> None:
        await self.ws.send_text(text)

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await self.ws.close(code=code, reason=reason)
