"""Shared pieces of the realtime tests and bench: a session over a real WebSocket, events in and out,
and real speech (LibriVox) as the Realtime API's pcm16 at 24 kHz, sent at real-time pace."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import soundfile as sf
from websockets.sync.client import connect

from omniserve.media.pcm import PCM16, PcmWriter
from tests.audio_helpers import librivox_clips

CHUNK = 24000 * 2 // 50  # 20 ms of pcm16 at 24 kHz


def ws_url(base_url: str, query: str = "") -> str:
    return base_url.replace("http://", "ws://") + "/v1/realtime" + query


def open_session(base_url: str, key: str | None = None, headers: dict | None = None, **kw):
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    return connect(ws_url(base_url), additional_headers={**auth, **(headers or {})}, max_size=2 ** 24, **kw)


def receive(ws, timeout: float = 60) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def send(ws, event: dict) -> None:
    ws.send(json.dumps(event))


def next_of(ws, *types: str, timeout: float = 60) -> dict:
    """The next event of one of `types` (those of other types are passed over)."""
    while (event := receive(ws, timeout))["type"] not in types:
        pass
    return event


def until(ws, kind: str, timeout: float = 120) -> list[dict]:
    """Every event up to and including the next one of type `kind`."""
    events = [receive(ws, timeout)]
    while events[-1]["type"] != kind:
        events.append(receive(ws, timeout))
    return events


def speech_pcm24k(clip: int = 0, silence_before_s: float = 1.0, silence_after_s: float = 1.5) -> bytes:
    """A LibriVox sentence with silence around it, as the Realtime API's default pcm16 at 24 kHz."""
    audio, rate = sf.read(librivox_clips()[clip][0], dtype="int16")
    pcm = np.concatenate([np.zeros(int(rate * silence_before_s), np.int16), audio,
                          np.zeros(int(rate * silence_after_s), np.int16)])
    writer = PcmWriter(PCM16, rate)
    return writer.write(pcm.tobytes()) + writer.flush()


def append_audio(ws, pcm: bytes, pace: float | None = 0.02) -> None:
    """`pcm` in 20 ms appends, one every `pace` seconds (None: as fast as they go)."""
    start = time.monotonic()
    for k, i in enumerate(range(0, len(pcm), CHUNK)):
        send(ws, {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[i:i + CHUNK]).decode()})
        if pace:
            time.sleep(max(0.0, start + (k + 1) * pace - time.monotonic()))


def audio_of(events: list[dict]) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
