"""`/v1/realtime`: the OpenAI Realtime API over WebSocket, and `POST /v1/realtime/calls` over WebRTC. `?model=`
picks the served chat model; the API key, or a client secret (`POST /v1/realtime/client_secrets`), is checked
first (api/middleware.py). The session runs through the same pipeline as chat: speech to text, the thinker,
and the talker (api/realtime/)."""

from __future__ import annotations

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.requests import HTTPConnection

from omniserve.api.errors import omni_error_body
from omniserve.api.middleware import presented_key
from omniserve.api.protocol.common import parse_body
from omniserve.api.realtime.connection import RealtimeConnection
from omniserve.api.realtime.events import ClientSecretOut, ErrorEvent
from omniserve.api.realtime.limits import SessionCount, SessionLimits
from omniserve.api.realtime.protocol import ClientSecretRequest, ClientSecretSession, RealtimeError
from omniserve.api.realtime.session import RealtimeSession
from omniserve.api.realtime.transport import WebSocketTransport
from omniserve.api.realtime.webrtc import RealtimeCall
from omniserve.api.routes.common import read_json
from omniserve.api.speakers import Speakers, voice_names
from omniserve.errors import InvalidRequest, NotFound, Overloaded, Unauthorized, UnsupportedMediaType
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


def _too_many(sessions: SessionCount) -> Overloaded:
    return Overloaded(f"this server has {sessions.limit} realtime sessions open, its limit "
                      "(--realtime-max-sessions); retry later", code="too_many_sessions")


def _session_ended(sessions: SessionCount) -> None:
    """A session (WebSocket or call) is over: its slot, and the memory it held, go back."""
    sessions.give_back()
    trim_freed_memory()


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket, model: str | None = None):
    sessions = ws.app.state.realtime_sessions
    if not sessions.take():
        busy = _too_many(sessions)
        await ws.send_denial_response(JSONResponse(omni_error_body(busy), status_code=busy.status_code))
        return
    try:
        await _serve(ws, model)
    finally:
        _session_ended(sessions)


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
    await RealtimeConnection(ws, WebSocketTransport(ws), client, session, chat, talker, asr, beta,
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


def configured_session(request: Request, *specs: ClientSecretSession | None,
                       model: str | None = None) -> tuple[RealtimeSession, ServedModel]:
    """A session set up by `specs` in turn (a client secret's, then the request's), on `model` or the one they
    name. InvalidRequest naming `session.<field>` for a setting it cannot take."""
    given = [spec for spec in specs if spec is not None]
    model = model or next((spec.model for spec in reversed(given) if spec.model), None)
    try:
        session, chat = new_session(request, model)
        for spec in given:
            session.configure(spec)
    except RealtimeError as error:
        param = "session" if error.param is None else f"session.{error.param.removeprefix('session.')}"
        raise InvalidRequest(error.message, param=param, code=error.code) from None
    return session, chat


@router.post("/v1/realtime/client_secrets", response_model=ClientSecretOut)
async def client_secret(request: Request) -> ClientSecretOut:
    """A short-lived key that opens one kind of thing, a realtime session with these settings."""
    body = await read_json(request, ClientSecretRequest)
    if request.app.state.client_secrets.get(presented_key(request.scope)) is not None:
        raise Unauthorized("a client secret cannot make another; use the API key")
    session, _ = configured_session(request, body.session)
    secret = request.app.state.client_secrets.issue(body.session, body.expires_after.seconds)
    return ClientSecretOut(value=secret.value, expires_at=secret.expires_at, session=session.describe())


async def _offer(request: Request) -> tuple[str, ClientSecretSession | None]:
    """The SDP offer and the session settings of a call: multipart/form-data with `sdp` and an optional `session`
    (JSON), or the offer alone as an application/sdp body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/sdp":
        return (await request.body()).decode("utf-8", "replace"), None
    if kind != "multipart/form-data":
        raise UnsupportedMediaType(f"send the SDP offer as multipart/form-data (fields `sdp`, and `session` as JSON) "
                                   f"or as an application/sdp body; got {kind[:100] or 'no Content-Type'!r}")
    async def text(name: str) -> str | None:
        value = form.get(name)
        return (await value.read()).decode("utf-8", "replace") if isinstance(value, UploadFile) else value

    async with request.form() as form:
        sdp, session = await text("sdp"), await text("session")
    if not sdp:
        raise InvalidRequest("the form has no `sdp` field: put the WebRTC offer (pc.createOffer()'s sdp) in it",
                             param="sdp")
    return sdp, parse_body(session.encode(), ClientSecretSession) if session else None


@router.post("/v1/realtime/calls", status_code=201, response_class=Response,
             responses={201: {"content": {"application/sdp": {}}, "description": "the SDP answer"}})
async def create_call(request: Request, model: str | None = None) -> Response:
    """A realtime session over WebRTC: the answer to the browser's offer; the session runs until the call ends."""
    offer, spec = await _offer(request)
    if not offer.lstrip().startswith("v=0"):
        raise InvalidRequest("`sdp` is not an SDP offer (an offer starts with v=0): send pc.localDescription.sdp after "
                             "pc.createOffer()", param="sdp")
    secret = request.app.state.client_secrets.get(presented_key(request.scope))
    session, chat = configured_session(request, secret.session if secret else None, spec, model=model)
    sessions = request.app.state.realtime_sessions
    if not sessions.take():
        raise _too_many(sessions)
    settings, client = request.app.state.settings, request.app.state.client
    call, running = RealtimeCall(offer, settings.realtime_ice_servers), False
    try:
        try:
            answer = await call.answer()
        except OSError:
            raise  # the server's own trouble (its sockets), not the offer's
        except Exception as exc:  # noqa: BLE001 - aiortc raises what its SDP parser meets
            raise InvalidRequest(f"`sdp`: the offer cannot be answered: {exc or type(exc).__name__}",
                                 param="sdp") from None
        connection = RealtimeConnection(request, call.transport, client, session, chat, client.model(None, "tts"),
                                        client.model(None, "asr"), idle_timeout=settings.realtime_idle_timeout,
                                        audio_out=call.track)
        request.app.state.realtime_calls.run(call, connection, done=lambda: _session_ended(sessions))
        running = True
    finally:
        if not running:
            sessions.give_back()
            await call.pc.close()
    return Response(answer, status_code=201, media_type="application/sdp",
                    headers={"Location": f"/v1/realtime/calls/{call.id}"})


@router.post("/v1/realtime/calls/{call_id}/hangup")
async def hang_up(request: Request, call_id: str) -> Response:
    """End a call from the server's side (the browser may simply close its peer connection)."""
    call = request.app.state.realtime_calls.get(call_id)
    if call is None:
        raise NotFound(f"no call {call_id!r} is in progress", param="call_id", code="call_not_found")
    await call.hang_up()
    return Response(status_code=200)
