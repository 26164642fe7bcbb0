"""One realtime session's connection (a WebSocket, or a WebRTC call: api/realtime/transport.py): reads client
events into the session, carries out what the session asks (transcribe the user's audio, start or cancel a
response) as tasks, and sends server events in order.

Events are serialised when they are emitted (an item changes as its response goes on) and go out
through one writer. A closed connection cancels its tasks, which aborts their pipeline requests, so a
session holds nothing once it is gone. Over WebRTC the answer's audio goes out on a media track
(`AudioOut`) instead of in `response.output_audio.delta` events."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass

import numpy as np
from starlette.requests import HTTPConnection

from omniserve.api.protocol.common import load_json
from omniserve.api.realtime.ahead import AnswerAhead, Begun, Prefetched
from omniserve.api.realtime.conversation import new_id
from omniserve.api.realtime.events import (
    BETA_NAMES,
    ContentPart,
    DeltaEvent,
    ErrorEvent,
    Item,
    ItemTruncatedEvent,
    ServerEvent,
    TranscriptionCompletedEvent,
    TranscriptionDeltaEvent,
    TranscriptionFailedEvent,
)
from omniserve.api.realtime.limits import REALTIME
from omniserve.api.realtime.protocol import RealtimeError, parse_client_event
from omniserve.api.realtime.responder import RealtimeResponse, fit_context, plan_answer
from omniserve.api.realtime.session import (
    Action,
    CancelResponse,
    ClearOutputAudio,
    ForgetSoFar,
    RealtimeSession,
    StartResponse,
    Transcribe,
    TranscribeSoFar,
)
from omniserve.api.realtime.settings import ResponseOptions
from omniserve.api.realtime.transport import AudioOut, Transport
from omniserve.api.routes.chat import hears_itself
from omniserve.errors import InvalidRequest, OmniError
from omniserve.media.pcm import ASR_RATE
from omniserve.runtime.client import Client, ServedModel
from omniserve.runtime.types import MediaReading, OmniRequest

log = logging.getLogger(__name__)

MAX_UNSENT_BYTES = 32 * 1024 * 1024  # events waiting for a client that does not read: past it, the session ends

@dataclass
class Heard:
    """A transcription: its pieces as they came, the whole text, and the seconds of audio."""

    deltas: list[str]
    transcript: str
    seconds: float | None


class RealtimeConnection:
    def __init__(self, conn: HTTPConnection, transport: Transport, client: Client, session: RealtimeSession,
                 chat: ServedModel, talker: ServedModel | None, asr: ServedModel | None, beta: bool = False,
                 idle_timeout: float = 0, audio_out: AudioOut | None = None):
        """`conn`: the request that opened the session (the server's state). `beta`: the client speaks the beta
        API (`OpenAI-Beta: realtime=v1`): events go by its names. `idle_timeout`: seconds the client may send
        nothing while no response runs (0: for ever). `audio_out`: the media track that plays the answers'
        audio (WebRTC; None: it goes in events)."""
        self.conn, self.transport, self.client, self.session = conn, transport, client, session
        self.chat, self.talker, self.asr = chat, talker, asr
        self.beta = beta
        self.idle_timeout = idle_timeout
        self._heard_at = time.monotonic()  # the client's last event
        self._unsent = 0  # bytes of events waiting to go out
        self._dropping: asyncio.Task | None = None
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._response: RealtimeResponse | None = None
        self._response_task: asyncio.Task | None = None
        self._transcriptions: dict[str, asyncio.Task] = {}
        self._early: tuple[str, asyncio.Task] | None = None  # the buffer's transcription, begun at a pause
        self._ahead: AnswerAhead | None = None  # and its answer
        self.audio_out = audio_out
        self._track_error: str | None = None  # the last error from the microphone track (said once)
        self._stopped = False  # the session is over: audio from a track starts nothing more

    def emit(self, event: ServerEvent) -> None:
        if self.audio_out is not None and self._played(event):
            return
        if self.beta and event.type in BETA_NAMES:
            name = BETA_NAMES[event.type]
            if name is None:
                return
            event = event.model_copy(update={"type": name})
        text = event.model_dump_json()
        self._unsent += len(text)
        if self._unsent > MAX_UNSENT_BYTES:  # the client does not read what it is sent: it holds nothing more
            if self._dropping is None:
                self._dropping = asyncio.create_task(self._drop_slow_client())
            return
        self._outbox.put_nowait(text)

    async def _drop_slow_client(self) -> None:
        log.warning("realtime session %s closed: %d MiB of events waited for the client to read them",
                    self.session.id, self._unsent // 2**20)
        await self._stop()
        await self.transport.close(code=1008, reason="the client read too slowly")

    def _played(self, event: ServerEvent) -> bool:
        """Over WebRTC: the answer's audio goes to the track, not in events (True: `event` was taken)."""
        if isinstance(event, DeltaEvent) and event.type == "response.output_audio.delta":
            self.audio_out.play(event.response_id, base64.b64decode(event.delta), self._response.options.output_format)
            return True
        if event.type == "response.done":
            self.audio_out.finish(event.response.id)
        return False

    async def serve(self) -> None:
        self.emit(self.session.created())
        writer = asyncio.create_task(self._write())
        watch = asyncio.create_task(self._watch_idle()) if self.idle_timeout else None
        try:
            while not writer.done():
                message = await self.transport.receive()
                if message is None:  # the client left
                    break
                self._heard_at = time.monotonic()
                try:
                    await self._take(message)
                except RealtimeError as exc:
                    self.emit(ErrorEvent.of(exc))
        finally:
            await self._stop()
            for task in (writer, watch):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (writer, watch) if t is not None), return_exceptions=True)

    async def _watch_idle(self) -> None:
        """Close the session once the client has sent nothing for `idle_timeout` while nothing ran for it."""
        while True:
            left = self._heard_at + self.idle_timeout - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)
            elif self._busy():
                self._heard_at = time.monotonic()  # the time runs from when the work ends
            else:
                self.emit(ErrorEvent.of(RealtimeError(
                    f"the session sent nothing for {self.idle_timeout:g} s (--realtime-idle-timeout) and is closed",
                    code="session_expired")))
                await self._outbox.join()
                await self.transport.close(code=1000, reason="idle")
                return

    def _busy(self) -> bool:
        tasks = [self._response_task, *self._transcriptions.values()]
        return any(t is not None and not t.done() for t in tasks)

    async def _write(self) -> None:
        while True:
            text = await self._outbox.get()
            await self.transport.send(text)
            self._unsent -= len(text)
            self._outbox.task_done()

    async def _take(self, message: str | bytes) -> None:
        if not isinstance(message, str):
            raise RealtimeError("binary messages are not events: send each event as JSON in a text message")
        try:
            data = load_json(message, "the message")
        except InvalidRequest as exc:
            raise RealtimeError(f"{exc.message}: send one event per text message") from None
        await self._act(self.session.handle(parse_client_event(data)))

    async def hear(self, samples: np.ndarray) -> None:
        """The user's audio from a media track (16 kHz float32). An error of the buffer (it is full, with turn
        detection off) is said once, not for every frame after it; one of what the audio started (a turn's end
        while a response still runs) is said as on the WebSocket."""
        if self._stopped:
            return
        self._heard_at = time.monotonic()
        try:
            results = self.session.hear(samples)
        except RealtimeError as exc:
            if exc.code != self._track_error:
                self._track_error = exc.code
                self.emit(ErrorEvent.of(exc))
            return
        self._track_error = None
        try:
            await self._act(results)
        except RealtimeError as exc:
            self.emit(ErrorEvent.of(exc))

    async def _act(self, results: list[ServerEvent | Action]) -> None:
        """Carry out what the session asks, and send what it says."""
        for result in results:
            match result:
                case TranscribeSoFar(item_id=item_id, audio=audio, answer=answer):
                    await self._drop_early()
                    heard = asyncio.create_task(self._recognize(audio))
                    self._early = (item_id, heard)
                    if answer is not None and not hears_itself(self.client, self.chat):
                        self._ahead = AnswerAhead(item_id, self._answer_ahead(item_id, heard, answer),
                                                  self.client.count_answer_ahead)
                case ForgetSoFar():
                    await self._drop_early()
                case Transcribe(item_id=item_id):
                    early = await self._take_early(item_id)
                    self._transcriptions[item_id] = asyncio.create_task(self._transcribe(item_id, early))
                case StartResponse():
                    await self._start(result)
                case CancelResponse():
                    await self._cancel(result)
                case ClearOutputAudio(event_id=event_id):
                    if self.audio_out is None:
                        raise RealtimeError("output_audio_buffer.clear is for WebRTC calls, whose audio plays from "
                                            "the server's track; over a WebSocket, stop playing it yourself",
                                            event_id=event_id)
                    self.audio_out.clear()
                case _:
                    self.emit(result)

    # ---- responses --------------------------------------------------------------------------------

    async def _start(self, start: StartResponse) -> None:
        if self._busy_responding():
            await self._drop_early()  # a turn's answer begun ahead cannot be this response
            raise RealtimeError(f"response {self._response.id} is still in progress; cancel it first, or wait for "
                                "its response.done", code="conversation_already_has_active_response",
                                event_id=start.event_id)
        ahead, self._ahead = self._ahead, None  # the turn's answer, if it was begun at the pause
        self._response = RealtimeResponse(self.conn, self.client, self.chat, self.talker, self.session.conversation,
                                          start.options, self.emit, ahead)
        self._response_task = asyncio.create_task(self._response.run(self._transcribed))

    async def _cancel(self, cancel: CancelResponse) -> None:
        """Cancel the response in progress. A user who spoke over it heard only part of its audio: its item
        is cut to what was played. Over WebRTC the server plays it, so speaking over it also stops it there,
        even once it is all written (it plays on in real time)."""
        await asyncio.sleep(0)  # a response created just now starts, so that it still ends with response.done
        response, task = self._response, self._response_task
        running = task is not None and not task.done()
        if not running and cancel.reason == "client_cancelled":
            raise RealtimeError("there is no response in progress to cancel", code="response_cancel_not_active",
                                event_id=cancel.event_id)
        if response is None or cancel.reason != "turn_detected" and not running:
            return
        played = response.played_ms()
        if running:
            response.cancel_reason = cancel.reason
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if cancel.reason != "turn_detected":
            return
        if self.audio_out is not None:  # the user spoke over it: it stops, and was heard as far as it played
            cut = self.audio_out.clear()
            if cut is None or cut.response_id != response.id:
                return
            played = cut.played_ms
        elif not running:
            return
        spoken = response.spoken_item
        conversation = self.session.conversation
        if spoken and spoken in conversation.spoken and played < conversation.spoken[spoken].ms:
            conversation.truncate(spoken, 0, played)
            self.emit(ItemTruncatedEvent(item_id=spoken, content_index=0, audio_end_ms=played))

    async def _transcribed(self) -> None:
        """Wait for the user's audio to be transcribed (a cascade's thinker reads the transcripts)."""
        pending = [t for t in self._transcriptions.values() if not t.done()]
        if pending:
            await asyncio.wait(pending)  # not gather: a cancelled response must not cancel them

    # ---- the user's audio, transcribed ----------------------------------------------------------------

    async def _transcribe(self, item_id: str, early: asyncio.Task | None) -> None:
        """Transcribe a user item, or take `early`, the transcription begun at the pause before it was
        committed (the audio since was quiet), and say so."""
        conversation = self.session.conversation
        audio = conversation.user_audio[item_id]
        try:
            heard = await (early or self._recognize(audio))
        except OmniError as exc:
            self.emit(TranscriptionFailedEvent(item_id=item_id, error={"type": exc.error_type, "code": exc.code,
                                                                       "message": exc.message}))
            return
        for delta in heard.deltas:
            self.emit(TranscriptionDeltaEvent(item_id=item_id, delta=delta))
        part = next((p for i in conversation.items if i.id == item_id for p in i.content or []
                     if p.type == "input_audio"), None)
        if part is not None:
            part.transcript = heard.transcript
        self.emit(TranscriptionCompletedEvent(item_id=item_id, transcript=heard.transcript,
                                              usage={"type": "duration",
                                                     "seconds": round(heard.seconds or len(audio) / ASR_RATE, 3)}))

    async def _recognize(self, audio: np.ndarray) -> Heard:
        request = OmniRequest(new_id("transcription"), audios=[audio], entry=self.asr.entry, lane=REALTIME,
                              params={self.asr.stage: {"task": "transcribe"}})
        deltas, reading = [], MediaReading("audio")
        stream = self.client.generate(request)
        try:
            async for out in stream:
                delta = out.text if deltas else out.text.lstrip()
                if delta:
                    deltas.append(delta)
                if isinstance(out.data, MediaReading):
                    reading = out.data
        finally:
            await stream.aclose()
        return Heard(deltas, (reading.text or "".join(deltas)).strip(), reading.duration)

    async def _answer_ahead(self, item_id: str, heard: asyncio.Task, options: ResponseOptions) -> Begun | None:
        """Begin the answer to the buffer about to become `item_id`, once `heard` has its transcript: the
        request the response would make with the item in the conversation (see `ahead`)."""
        await asyncio.wait([heard])  # not awaited directly: dropping the answer must not cancel the transcript
        if heard.cancelled() or heard.exception() is not None or self._busy_responding():
            return None
        user = Item(id=item_id, type="message", role="user",
                    content=[ContentPart(type="input_audio", transcript=heard.result().transcript)])
        conversation = self.session.conversation
        items = [*conversation.items, user]
        try:  # the items the response will read: those that fit, as it will find
            items = items[await fit_context(self.client, self.chat, conversation, items, options):]
            plan = await plan_answer(self.conn, self.client, self.chat, self.talker, conversation, items, options,
                                     new_id("resp"))
        except OmniError:  # the response will fail the same way, and say why
            return None
        return Begun(plan.key, Prefetched(self.client.generate(plan.omni)))

    def _busy_responding(self) -> bool:
        return self._response_task is not None and not self._response_task.done()

    async def _take_early(self, item_id: str) -> asyncio.Task | None:
        """The transcription begun at the pause before `item_id` was committed, if it was for that item
        (its answer stays for the response; any other is dropped)."""
        early = self._early[1] if self._early and self._early[0] == item_id else None
        if early is None:
            await self._drop_early()
        self._early = None
        return early

    async def _drop_early(self) -> None:
        if self._early is not None:
            self._early[1].cancel()  # its request is aborted
            self._early = None
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            await ahead.drop()

    async def _stop(self) -> None:
        self._stopped = True
        await self._drop_early()
        tasks = [t for t in (self._response_task, *self._transcriptions.values()) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
