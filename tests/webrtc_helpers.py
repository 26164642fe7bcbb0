"""A realtime session over WebRTC as a browser opens one (`POST /v1/realtime/calls`), through aiortc: a microphone
track that says what it is given at real-time pace, the `oai-events` data channel, and a recording of the server's
audio track. aiortc runs in its own event loop on a thread; `RtcCall` has a WebSocket's `send`/`recv`, so the
WebSocket helpers (`send`, `receive`, `next_of`, `until` in realtime_helpers.py) work on it as they are."""

from __future__ import annotations

import asyncio
import fractions
import json
import queue
import threading
import time
from collections import deque

import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from omniserve.media.pcm import Resampler

RATE = 48000
FRAME = RATE // 50  # 20 ms
LOUD = 300  # a 16-bit sample over this is not silence


class Microphone(MediaStreamTrack):
    """Silence, and what `say` is given (pcm16 at 24 kHz), in 20 ms frames in real time."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self._pending: deque[np.ndarray] = deque()
        self._new = False
        self.began: float | None = None  # when the first frame of what it was last given went out
        self._start: float | None = None
        self._sent = 0
        self._to_48k = Resampler(24000, RATE, "s16")

    def say(self, pcm24k: bytes) -> None:
        samples = self._to_48k(np.frombuffer(pcm24k, "<i2"))
        self._pending.extend(np.array_split(samples, range(FRAME, len(samples), FRAME)))
        self._new, self.began = True, None

    def speaking(self) -> bool:
        return bool(self._pending)

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(self._start + self._sent / RATE - time.monotonic())
        out = np.zeros(FRAME, np.int16)
        if self._pending:
            chunk = self._pending.popleft()
            out[:len(chunk)] = chunk
            if self._new:
                self._new, self.began = False, time.monotonic()
        frame = av.AudioFrame.from_ndarray(out.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._sent, fractions.Fraction(1, RATE)
        self._sent += FRAME
        return frame


class RtcCall:
    """One call. `send(text)` and `recv(timeout)` carry events as the WebSocket's do; `say(pcm24k)` speaks into
    the microphone; `heard()` is the server's track so far (pcm16 at 24 kHz, silence between answers included)."""

    def __init__(self, base_url: str, session: dict | None = None, key: str | None = None, model: str | None = None,
                 raw_sdp: bool = False):
        self._events: queue.Queue[str] = queue.Queue()
        self._heard = bytearray()
        self.loud_at: list[float] = []  # when each frame of the server's track that was not silence came
        self.arrived: dict[str, float] = {}  # event_id -> when the event came
        self._lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        try:
            self.location = self._run(self._open(base_url, session, key, model, raw_sdp))
        except BaseException:
            self.close()
            raise

    def _run(self, coroutine, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _open(self, base_url: str, session: dict | None, key: str | None, model: str | None,
                    raw_sdp: bool) -> str:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.microphone = Microphone()
        self.pc.addTrack(self.microphone)
        self.channel = self.pc.createDataChannel("oai-events")
        self.channel.on("message", self._arrived)
        opened = asyncio.Event()
        self.channel.on("open", opened.set)
        self.pc.on("track", lambda track: asyncio.ensure_future(self._record(track)))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self.pc.localDescription.sdp
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        url = base_url + "/v1/realtime/calls" + (f"?model={model}" if model else "")
        async with httpx.AsyncClient(timeout=60) as http:
            if raw_sdp:
                r = await http.post(url, content=offer, headers={**headers, "Content-Type": "application/sdp"})
            else:
                files = {"sdp": (None, offer, "application/sdp")}
                if session is not None:
                    files["session"] = (None, json.dumps(session), "application/json")
                r = await http.post(url, files=files, headers=headers)
        if r.status_code != 201:
            await self.pc.close()
            raise CallRefused(r)
        assert r.headers["content-type"].startswith("application/sdp")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
        await asyncio.wait_for(opened.wait(), 30)
        return r.headers["location"]

    def _arrived(self, text: str) -> None:
        self.arrived[json.loads(text).get("event_id")] = time.monotonic()
        self._events.put(text)

    async def _record(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=24000)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            for out in resampler.resample(frame):
                samples = out.to_ndarray()
                with self._lock:
                    self._heard += samples.tobytes()
                    if np.abs(samples.astype(np.int32)).max(initial=0) > LOUD:
                        self.loud_at.append(time.monotonic())

    # ---- a WebSocket's face ----

    def send(self, text: str) -> None:
        self.loop.call_soon_threadsafe(self.channel.send, text)

    def recv(self, timeout: float = 60) -> str:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no event in {timeout} s") from None

    # ---- audio ----

    def say(self, pcm24k: bytes) -> None:
        self.loop.call_soon_threadsafe(self.microphone.say, pcm24k)

    def heard(self) -> bytes:
        with self._lock:
            return bytes(self._heard)

    def close(self) -> None:
        if getattr(self, "pc", None) is not None:
            self._run(self.pc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def __enter__(self) -> RtcCall:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CallRefused(Exception):
    def __init__(self, response: httpx.Response):
        super().__init__(f"{response.status_code}: {response.text}")
        self.response = response


def spoken(pcm24k: bytes) -> float:
    """Seconds of `pcm24k` louder than silence (20 ms windows)."""
    samples = np.abs(np.frombuffer(pcm24k, "<i2").astype(np.int32))
    windows = samples[:len(samples) // 480 * 480].reshape(-1, 480)
    return float((windows.max(axis=1) > LOUD).sum() * 0.02)
