"""The WebRTC call's pieces on their own: the answer track's frames and its output_audio_buffer events, and the
microphone's shorter jitter buffer on the pinned aiortc."""

from __future__ import annotations

import asyncio

import numpy as np
from aiortc import RTCPeerConnection

from omniserve.api.realtime.webrtc import FRAME_SAMPLES, TRACK_RATE, AnswerTrack, RealtimeCall, hear_sooner
from omniserve.media.pcm import PCM16, PCMU, from_pcm16


def frames(track: AnswerTrack, n: int) -> list[np.ndarray]:
    async def read() -> list[np.ndarray]:
        return [(await track.recv()).to_ndarray().reshape(-1) for _ in range(n)]

    return asyncio.run(read())


def tone(seconds: float, rate: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)


def test_the_answer_plays_in_order_between_silences_and_says_when():
    track, events = AnswerTrack(), []
    track.on_event = lambda e: events.append((e.type, e.response_id))
    assert not frames(track, 2)[1].any()  # silence while there is nothing to say
    track.play("resp_1", tone(0.1).tobytes(), PCM16)
    track.finish("resp_1")
    played = frames(track, 8)
    loud = [bool(np.abs(f.astype(int)).max() > 1000) for f in played]
    assert all(len(f) == FRAME_SAMPLES for f in played) and loud[:4] == [True] * 4 and not any(loud[6:])
    assert sum(np.abs(f.astype(int)).max() > 1000 for f in played) in (5, 6)  # 100 ms at 48 kHz, in 20 ms frames
    assert events == [("output_audio_buffer.started", "resp_1"), ("output_audio_buffer.stopped", "resp_1")]


def test_a_response_not_yet_done_does_not_stop_and_clear_drops_what_is_queued():
    track, events = AnswerTrack(), []
    track.on_event = lambda e: events.append((e.type, e.response_id))
    track.play("resp_1", from_pcm16(tone(0.04, 8000), PCMU), PCMU)  # any of the session's formats
    frames(track, 5)
    assert events == [("output_audio_buffer.started", "resp_1")]  # ran dry, but its response goes on
    track.play("resp_1", tone(1.0).tobytes(), PCM16)
    frames(track, 1)
    track.clear()
    assert events[-1] == ("output_audio_buffer.cleared", "resp_1")
    assert not any(f.any() for f in frames(track, 3))
    track.clear()  # nothing plays: nothing to say
    assert len(events) == 2


def test_the_next_answer_starts_after_the_last_has_played():
    track, events = AnswerTrack(), []
    track.on_event = lambda e: events.append((e.type, e.response_id))
    for rid in ("resp_1", "resp_2"):
        track.play(rid, tone(0.05).tobytes(), PCM16)
        track.finish(rid)
    frames(track, 10)
    assert events == [("output_audio_buffer.started", "resp_1"), ("output_audio_buffer.stopped", "resp_1"),
                      ("output_audio_buffer.started", "resp_2"), ("output_audio_buffer.stopped", "resp_2")]


def test_the_microphone_is_held_one_packet_not_four():
    async def check() -> None:
        pc = RTCPeerConnection()
        receiver = pc.addTransceiver("audio").receiver
        buffer = receiver._RTCRtpReceiver__jitter_buffer  # the pinned aiortc's: 4 packets
        assert buffer._prefetch == 4
        hear_sooner(receiver)
        assert receiver._RTCRtpReceiver__jitter_buffer._prefetch == 1
        await pc.close()

    asyncio.run(check())
    assert TRACK_RATE == 48000


def test_a_call_whose_peer_never_connects_ends():
    async def check() -> None:
        browser = RTCPeerConnection()
        browser.addTransceiver("audio")
        browser.createDataChannel("oai-events")
        await browser.setLocalDescription(await browser.createOffer())
        call = RealtimeCall(browser.localDescription.sdp, [], connect_timeout=0.3)
        assert (await call.answer()).startswith("v=0")  # and the browser never takes the answer
        await call.hang_up_unless_connected()
        assert await asyncio.wait_for(call.transport.receive(), 1) is None  # the session ends
        await asyncio.gather(call.pc.close(), browser.close())

    asyncio.run(check())
