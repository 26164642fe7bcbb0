"""`/v1/realtime`: the OpenAI Realtime API over WebSocket. `?model=` picks the served chat model; the API
key is checked on the upgrade (api/middleware.py). The session runs through the same pipeline as chat:
speech to text, the thinker, and the talker (api/realtime/)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse

from omniserve.api.errors import omni_error_body
from omniserve.api.realtime.connection import RealtimeConnection
from omniserve.api.realtime.events import ErrorEvent
from omniserve.api.realtime.limits import SessionLimits
from omniserve.api.realtime.protocol import RealtimeError
from omniserve.api.realtime.session import RealtimeSession
from omniserve.api.speakers import Speakers, voice_names
from omniserve.errors import Overloaded
from omniserve.media.vad import SileroVad
from omniserve.memory import trim_freed_memory

router = APIRouter()


def _vad(ws: WebSocket) -> SileroVad:
    """One VAD model for every session (made on the first)."""
    state = ws.app.state
    if getattr(state, "vad", None) is None:
        state.vad = SileroVad()
    return state.vad


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket, model: str | None = None):
    sessions = ws.app.state.realtime_sessions
    if not sessions.take():
        busy = Overloaded(f"this server has {sessions.limit} realtime sessions open, its limit "
                          "(--realtime-max-sessions); retry later", code="too_many_sessions")
        await ws.send_denial_response(JSONResponse(omni_error_body(busy), status_code=busy.status_code))
        return
    try:
        await _serve(ws, model)
    finally:
        sessions.give_back()
        trim_freed_memory()


async def _serve(ws: WebSocket, model: str | None) -> None:
    settings = ws.app.state.settings
    client = ws.app.state.client
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
    chat = client.model(model, "chat")
    if chat is None or chat.kind != "chat":
        ids = ", ".join(m.id for m in client.served_models if m.kind == "chat")
        error = RealtimeError(f"model {model!r} is not a chat model this server serves; serve one of: {ids}",
                              code="model_not_found", param="model")
        await ws.send_text(ErrorEvent.of(error).model_dump_json())
        await ws.close(code=1008)
        return
    talker, asr = client.model(None, "tts"), client.model(None, "asr")
    limits = SessionLimits(settings.max_audio_seconds, settings.realtime_max_items,
                           round(settings.realtime_max_session_mib * 2**20))
    session = RealtimeSession(chat.id, voice_names(talker)[0] if talker and voice_names(talker) else None,
                              _vad(ws), asr.id if asr else None, limits,
                              check_voice=Speakers.of(ws).pick if talker else None)
    beta = "realtime=v1" in ws.headers.get("openai-beta", "")
    await RealtimeConnection(ws, client, session, chat, talker, asr, beta,
                             idle_timeout=settings.realtime_idle_timeout).serve()
