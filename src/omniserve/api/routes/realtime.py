"""`/v1/realtime`: the OpenAI Realtime API over WebSocket. `?model=` picks the served chat model; the API
key is checked on the upgrade (api/middleware.py). A bad event is an `error` event naming it, and the
session goes on; a closed socket ends the session and frees what it held."""

from __future__ import annotations

import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from omniserve.api.realtime.protocol import ErrorEvent, RealtimeError, ServerEvent, parse_client_event
from omniserve.api.realtime.session import RealtimeSession
from omniserve.media.vad import SileroVad

router = APIRouter()


def _vad(ws: WebSocket) -> SileroVad:
    """One VAD model for every session (made on the first)."""
    state = ws.app.state
    if getattr(state, "vad", None) is None:
        state.vad = SileroVad()
    return state.vad


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket, model: str | None = None):
    client = ws.app.state.client
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
    served = client.model(model, "chat") if model else client.model(None, "chat")
    if served is None or served.kind != "chat":
        ids = ", ".join(m.id for m in client.served_models if m.kind == "chat")
        await _send(ws, ErrorEvent.of(RealtimeError(f"model {model!r} is not a chat model this server serves; "
                                                    f"serve one of: {ids}", code="model_not_found",
                                                    param="model")))
        await ws.close(code=1008)
        return
    tts = client.model(None, "tts")
    voices = (tts.info.get("voices") if tts else None) or ["alloy"]
    session = RealtimeSession(served.id, voices[0], _vad(ws))
    await _send(ws, session.created())
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            try:
                if message.get("text") is None:
                    raise RealtimeError("binary frames are not events: send each event as JSON in a text frame")
                try:
                    data = json.loads(message["text"])
                except ValueError:
                    raise RealtimeError("the message is not JSON: send one event per text frame") from None
                events = session.handle(parse_client_event(data))
            except RealtimeError as exc:
                events = [ErrorEvent.of(exc)]
            for event in events:
                await _send(ws, event)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client left while an event was going out


async def _send(ws: WebSocket, event: ServerEvent) -> None:
    await ws.send_text(event.model_dump_json())
