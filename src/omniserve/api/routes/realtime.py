"""`/v1/realtime`: the OpenAI Realtime API over WebSocket. `?model=` picks the served chat model; the API
key, or a client secret (`POST /v1/realtime/client_secrets`), is checked on the upgrade (api/middleware.py).
The session runs through the same pipeline as chat: speech to text, the thinker, and the talker
(api/realtime/)."""

from __future__ import annotations

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from omniserve.api.errors import omni_error_body
from omniserve.api.middleware import presented_key
from omniserve.api.realtime.connection import RealtimeConnection
from omniserve.api.realtime.events import ClientSecretOut, ErrorEvent
from omniserve.api.realtime.limits import SessionLimits
from omniserve.api.realtime.protocol import ClientSecretRequest, RealtimeError
from omniserve.api.realtime.session import RealtimeSession
from omniserve.api.routes.common import read_json
from omniserve.api.speakers import Speakers, voice_names
from omniserve.errors import InvalidRequest, Overloaded, Unauthorized
from omniserve.media.vad import SileroVad
from omniserve.memory import trim_freed_memory
from omniserve.runtime.client import ServedModel

router = APIRouter()


def _vad(conn: HTTPConnection) -> SileroVad:
    """One VAD model for every session (made on the first)."""
    state = conn.app.state
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
    secret = ws.app.state.client_secrets.get(presented_key(ws.scope))  # its settings start the session
    try:
        session, chat = new_session(ws, model or (secret.session.model if secret else None))
        if secret is not None:
            session.configure(secret.session)
    except RealtimeError as error:
        await ws.send_text(ErrorEvent.of(error).model_dump_json())
        await ws.close(code=1008)
        return
    talker, asr = client.model(None, "tts"), client.model(None, "asr")
    beta = "realtime=v1" in ws.headers.get("openai-beta", "")
    await RealtimeConnection(ws, client, session, chat, talker, asr, beta,
                             idle_timeout=settings.realtime_idle_timeout).serve()


def new_session(conn: HTTPConnection, model: str | None) -> tuple[RealtimeSession, ServedModel]:
    """A session with this server's defaults and limits, on the chat model `model` names (RealtimeError if
    it names none)."""
    settings = conn.app.state.settings
    client = conn.app.state.client
    chat = client.model(model, "chat")
    if chat is None or chat.kind != "chat":
        ids = ", ".join(m.id for m in client.served_models if m.kind == "chat")
        raise RealtimeError(f"model {model!r} is not a chat model this server serves; serve one of: {ids}",
                            code="model_not_found", param="model")
    talker, asr = client.model(None, "tts"), client.model(None, "asr")
    limits = SessionLimits(settings.max_audio_seconds, settings.realtime_max_items,
                           round(settings.realtime_max_session_mib * 2**20))
    session = RealtimeSession(chat.id, voice_names(talker)[0] if talker and voice_names(talker) else None,
                              _vad(conn), asr.id if asr else None, limits,
                              check_voice=Speakers.of(conn).pick if talker else None)
    return session, chat


@router.post("/v1/realtime/client_secrets", response_model=ClientSecretOut)
async def client_secret(request: Request) -> ClientSecretOut:
    """A short-lived key that opens one kind of thing, a realtime session with these settings."""
    body = await read_json(request, ClientSecretRequest)
    if request.app.state.client_secrets.get(presented_key(request.scope)) is not None:
        raise Unauthorized("a client secret cannot make another; use the API key")
    try:
        session, _ = new_session(request, body.session.model)
        session.configure(body.session)
    except RealtimeError as error:
        param = "session" if error.param is None else f"session.{error.param.removeprefix('session.')}"
        raise InvalidRequest(error.message, param=param, code=error.code) from None
    secret = request.app.state.client_secrets.issue(body.session, body.expires_after.seconds)
    return ClientSecretOut(value=secret.value, expires_at=secret.expires_at, session=session.describe())
