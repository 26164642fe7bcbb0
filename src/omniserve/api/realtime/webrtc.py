"""Realtime sessions over WebRTC (`POST /v1/realtime/calls`), as OpenAI's GA Realtime API has them, on aiortc.

The browser's offer brings its microphone as an Opus track and the `oai-events` data channel. The session is the
WebSocket's (`RealtimeConnection`); only what carries it differs: events go both ways on the data channel, the
user's audio comes from the track (decoded by aiortc, resampled to 16 kHz by PyAV) instead of
`input_audio_buffer.append`, and each answer's audio plays on the server's track (`AnswerTrack`, paced in real
time) instead of going in `response.output_audio.delta` events; `output_audio_buffer.started`, `.stopped` and
`.cleared` say when it plays. No STUN server is asked unless `--realtime-ice-servers` names one: the server
offers its own addresses, and a browser behind NAT reaches them as a peer-reflexive candidate."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError

from omniserve.api.realtime.connection import RealtimeConnection
from omniserve.api.realtime.conversation import new_id
from omniserve.api.realtime.events import OutputAudioBufferEvent, ServerEvent
from omniserve.api.realtime.transport import Cut
from omniserve.media.pcm import ASR_RATE, PcmFormat, Resampler, to_pcm16

log = logging.getLogger(__name__)

TRACK_RATE = 48000  # Opus's
FRAME_SAMPLES = TRACK_RATE // 50  # 20 ms, WebRTC's usual packet
MAX_CHANNEL_BUFFER = 4 * 2**20  # bytes of events the data channel may hold unsent before the writer waits
EVENTS_CHANNEL = "oai-events"
CONNECT_TIMEOUT = 20.0  # seconds the browser has, after the answer, to connect (else the call ends)


class ChannelTransport:
    """A call's events, on its `oai-events` data channel (api/realtime/transport.py). Until the browser opens
    the channel, events wait; an offer with no data channel (audio only) has them dropped."""

    def __init__(self, has_channel: bool, hang_up: Callable[[], Awaitable[None]]):
        self.has_channel = has_channel
        self._hang_up = hang_up
        self._inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._open = asyncio.Event()
        self._channel = None

    def attach(self, channel) -> None:
        if channel.label != EVENTS_CHANNEL or self._channel is not None:
            return  # another channel of the page's own: not ours
        self._channel = channel
        channel.on("message", self._inbox.put_nowait)
        channel.on("close", self.gone)
        if channel.readyState == "open":
            self._open.set()
        else:
            channel.on("open", self._open.set)

    def gone(self) -> None:
        """The client left (the channel closed, or the peer connection failed)."""
        self._inbox.put_nowait(None)

    async def receive(self) -> str | bytes | None:
        return await self._inbox.get()

    async def send(self, text: str) -> None:
        if not self.has_channel:
            return
        await self._open.wait()
        while self._channel.bufferedAmount > MAX_CHANNEL_BUFFER and self._channel.readyState == "open":
            await asyncio.sleep(0.02)  # a client that does not read: the connection's outbox grows, and is bounded
        if self._channel.readyState == "open":
            self._channel.send(text)

    async def close(self, code: int, reason: str) -> None:
        await self._hang_up()


class AnswerTrack(MediaStreamTrack):
    """The server's audio track: the answers' audio, in the order it came, in 20 ms frames at 48 kHz and in real
    time; silence between answers. Says when each response's audio starts and has all played
    (`AudioOut`, api/realtime/transport.py)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.on_event: Callable[[ServerEvent], None] = lambda event: None
        self._queue: deque[tuple[str, np.ndarray]] = deque()  # (response id, 48 kHz samples)
        self._resamplers: dict[str, Resampler] = {}
        self._finished: set[str] = set()
        self._cut: deque[str] = deque(maxlen=8)  # responses cleared: what more of them comes is not played
        self._playing: str | None = None
        self._played = 0  # samples of the playing response sent
        self._start: float | None = None
        self._sent = 0  # samples

    def play(self, response_id: str, audio: bytes, fmt: PcmFormat) -> None:
        if response_id in self._cut:
            return
        resample = self._resamplers.setdefault(response_id, Resampler(fmt.rate, TRACK_RATE, "s16"))
        self._queue.append((response_id, resample(to_pcm16(audio, fmt)).astype(np.int16)))

    def finish(self, response_id: str) -> None:
        if (resample := self._resamplers.pop(response_id, None)) is not None:
            self._queue.append((response_id, resample(None).astype(np.int16)))
            self._finished.add(response_id)
            self._stopped_if_played()

    def clear(self) -> Cut | None:
        response_id = self._playing or (self._queue[0][0] if self._queue else None)
        played = round(self._played * 1000 / TRACK_RATE) if self._playing else 0
        self._cut.extend(self._resamplers)
        self._queue.clear()
        self._resamplers.clear()
        self._finished.clear()
        self._playing = None
        if response_id is None:
            return None
        self.on_event(OutputAudioBufferEvent(type="output_audio_buffer.cleared", response_id=response_id))
        return Cut(response_id, played)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(self._start + self._sent / TRACK_RATE - time.monotonic())
        frame = av.AudioFrame.from_ndarray(self._next_samples().reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = TRACK_RATE, self._sent, fractions.Fraction(1, TRACK_RATE)
        self._sent += FRAME_SAMPLES
        return frame

    def _next_samples(self) -> np.ndarray:
        out = np.zeros(FRAME_SAMPLES, np.int16)
        filled = 0
        while filled < FRAME_SAMPLES and self._queue:
            response_id, samples = self._queue[0]
            if response_id != self._playing:
                self._stopped_if_played()
                self._playing, self._played = response_id, 0
                self.on_event(OutputAudioBufferEvent(type="output_audio_buffer.started", response_id=response_id))
            n = min(FRAME_SAMPLES - filled, len(samples))
            out[filled:filled + n] = samples[:n]
            filled += n
            self._played += n
            if n == len(samples):
                self._queue.popleft()
            else:
                self._queue[0] = (response_id, samples[n:])
        self._stopped_if_played()
        return out

    def _stopped_if_played(self) -> None:
        """The response playing now is done and nothing of it is left: say it stopped."""
        playing = self._playing
        if playing in self._finished and not any(r == playing for r, _ in self._queue):
            self._finished.discard(playing)
            self._playing = None
            self.on_event(OutputAudioBufferEvent(type="output_audio_buffer.stopped", response_id=playing))


class RealtimeCall:
    """One WebRTC call: its peer connection, the tracks both ways and the events channel. `answer()` answers the
    offer; the session's connection is then run by `serve`."""

    def __init__(self, offer_sdp: str, ice_servers: list[str], connect_timeout: float = CONNECT_TIMEOUT):
        self.id = new_id("rtc")
        self.connect_timeout = connect_timeout
        self._offer = offer_sdp
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(url) for url in ice_servers]))
        self.transport = ChannelTransport("m=application" in offer_sdp, self.hang_up)
        self.track = AnswerTrack()
        self._microphone: MediaStreamTrack | None = None
        self._listening: asyncio.Task | None = None
        self.pc.on("datachannel", self.transport.attach)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    async def answer(self) -> str:
        """The SDP answer (all candidates gathered: aiortc does not trickle). ValueError for an offer that
        is not one."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self._offer, type="offer"))
        audio = [t for t in self.pc.getTransceivers() if t.kind == "audio"]
        if not audio and not self.transport.has_channel:
            raise ValueError("it has no audio track and no data channel: add the microphone (pc.addTrack) and "
                             f"pc.createDataChannel({EVENTS_CHANNEL!r}) before pc.createOffer()")
        if audio:
            self.pc.addTrack(self.track)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def serve(self, connection: RealtimeConnection) -> None:
        """Run the session until the client leaves or the call is hung up, then close the call."""
        self.track.on_event = connection.emit
        if self._microphone is not None:
            self._listening = asyncio.create_task(self._listen(self._microphone, connection))
        watch = asyncio.create_task(self.hang_up_unless_connected())
        try:
            await connection.serve()
        finally:
            tasks = [t for t in (self._listening, watch) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.pc.close()

    async def hang_up_unless_connected(self) -> None:
        """A browser that got the answer but never connects (it left, or no address of ours reaches it) does
        not hold a session until the idle timeout."""
        await asyncio.sleep(self.connect_timeout)
        if self.pc.connectionState != "connected":
            log.info("realtime call %s ended: the peer did not connect in %g s", self.id, self.connect_timeout)
            await self.hang_up()

    async def hang_up(self) -> None:
        self.transport.gone()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._microphone is None:
            self._microphone = track
            for transceiver in self.pc.getTransceivers():
                if transceiver.receiver.track is track:
                    hear_sooner(transceiver.receiver)

    async def _on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.transport.gone()

    async def _listen(self, track: MediaStreamTrack, connection: RealtimeConnection) -> None:
        """The microphone's frames into the session, as 16 kHz mono float32. A failure here ends the call (a
        call that no longer hears would hold its session for nothing)."""
        resampler = av.AudioResampler(format="flt", layout="mono", rate=ASR_RATE)
        try:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                for out in resampler.resample(frame):
                    await connection.hear(out.to_ndarray().reshape(-1))
        except Exception:  # noqa: BLE001 - logged, and the call ends
            log.exception("realtime call %s: the microphone track failed", self.id)
            await self.hang_up()


def hear_sooner(receiver) -> None:
    """aiortc holds 4 packets of received audio (80 ms) before it decodes one, to put packets that came out of
    order back in it. That is 80 ms more before the VAD hears the end of every turn; speech to text does not
    miss a rare late 20 ms packet, so the microphone's is held 1 packet. (aiortc has no setting for it: the
    receiver's buffer is replaced; tests/unit/test_webrtc_units.py checks that the pinned aiortc has it.)"""
    name = "_RTCRtpReceiver__jitter_buffer"
    if isinstance(getattr(receiver, name, None), JitterBuffer):
        setattr(receiver, name, JitterBuffer(capacity=16, prefetch=1))


class RealtimeCalls:
    """The server's calls in progress, by id (to hang one up; all, when the server stops)."""

    def __init__(self) -> None:
        self._calls: dict[str, tuple[RealtimeCall, asyncio.Task]] = {}

    def run(self, call: RealtimeCall, connection: RealtimeConnection, done: Callable[[], None]) -> None:
        async def serve() -> None:
            try:
                await call.serve(connection)
            except Exception:  # noqa: BLE001 - one call's failure is logged and ends only that call
                log.exception("realtime call %s failed", call.id)
            finally:
                self._calls.pop(call.id, None)
                done()

        self._calls[call.id] = (call, asyncio.create_task(serve()))

    def get(self, call_id: str) -> RealtimeCall | None:
        entry = self._calls.get(call_id)
        return entry[0] if entry else None

    async def hang_up_all(self) -> None:
        entries = list(self._calls.values())
        for call, _ in entries:
            await call.hang_up()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(t for _, t in entries), return_exceptions=True), 5)
