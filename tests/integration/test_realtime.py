"""`/v1/realtime` over a real WebSocket (the `websockets` client): the API key on the upgrade, the session
and its settings, server-side turn detection on real speech streamed in 20 ms chunks, and error events
that leave the session open."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from omniserve.media.pcm import PCM16, PcmWriter
from tests.audio_helpers import librivox_clips
from tests.conftest import run_server

KEY = "sk-realtime-test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with run_server("--asr-model", "none", "--tts-model", "none", "--vision-model", "none", "--embedding-model",
                    "none", tmp_path=tmp_path_factory.mktemp("realtime"), api_key=KEY) as s:
        yield s


def url(server, query: str = "") -> str:
    return server.base_url.replace("http://", "ws://") + "/v1/realtime" + query


def session(server, **kw):
    return connect(url(server), additional_headers={"Authorization": f"Bearer {KEY}"}, **kw)


def receive(ws) -> dict:
    return json.loads(ws.recv(timeout=30))


def send(ws, event: dict) -> None:
    ws.send(json.dumps(event))


def speech_pcm24k(silence_before_s: float = 1.0, silence_after_s: float = 1.5) -> bytes:
    """A LibriVox sentence with silence around it, as the Realtime API's default pcm16 at 24 kHz."""
    audio, rate = sf.read(librivox_clips()[0][0], dtype="int16")
    pcm = np.concatenate([np.zeros(int(rate * silence_before_s), np.int16), audio,
                          np.zeros(int(rate * silence_after_s), np.int16)])
    writer = PcmWriter(PCM16, rate)
    return writer.write(pcm.tobytes()) + writer.flush()


def test_the_api_key_is_checked_on_the_upgrade(server):
    with pytest.raises(InvalidStatus) as caught:
        connect(url(server)).close()
    assert caught.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        connect(url(server), additional_headers={"Authorization": "Bearer wrong"}).close()
    # browsers cannot set headers: the key rides as a subprotocol, and the session speaks "realtime"
    with connect(url(server), subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as ws:
        assert ws.subprotocol == "realtime" and receive(ws)["type"] == "session.created"


def test_the_session_and_its_settings(server):
    with session(server) as ws:
        created = receive(ws)
        s = created["session"]
        assert created["type"] == "session.created" and created["event_id"]
        assert s["type"] == "realtime" and s["model"] == "smollm2-135m" and s["output_modalities"] == ["audio"]
        assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert s["audio"]["input"]["turn_detection"] == {
            "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
            "create_response": True, "interrupt_response": True}
        send(ws, {"type": "session.update", "session": {
            "type": "realtime", "instructions": "Be brief.", "output_modalities": ["text"],
            "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.7}},
                      "output": {"voice": "echo", "format": {"type": "audio/pcmu"}}}}})
        updated = receive(ws)["session"]
        assert updated["instructions"] == "Be brief." and updated["output_modalities"] == ["text"]
        assert updated["audio"]["input"]["turn_detection"]["threshold"] == 0.7
        assert updated["audio"]["output"] == {"format": {"type": "audio/pcmu", "rate": 8000}, "voice": "echo",
                                              "speed": 1.0}
        # beta's flat names still work
        send(ws, {"type": "session.update", "session": {"input_audio_format": "g711_alaw", "turn_detection": None,
                                                        "modalities": ["audio", "text"]}})
        updated = receive(ws)["session"]
        assert updated["audio"]["input"]["format"] == {"type": "audio/pcma", "rate": 8000}
        assert updated["audio"]["input"]["turn_detection"] is None and updated["output_modalities"] == ["audio", "text"]


def test_server_vad_hears_a_spoken_sentence_and_commits_it(server):
    audio = speech_pcm24k()
    chunk = 24000 * 2 // 50  # 20 ms of pcm16 at 24 kHz
    with session(server) as ws:
        receive(ws)
        for i in range(0, len(audio), chunk):
            send(ws, {"type": "input_audio_buffer.append", "audio": base64.b64encode(audio[i:i + chunk]).decode()})
        events = [receive(ws) for _ in range(3)]
    started, stopped, committed = events
    assert [e["type"] for e in events] == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                                           "input_audio_buffer.committed"]
    assert 1000 - 300 - 64 <= started["audio_start_ms"] <= 1000 + 400  # speech begins at 1 s, with 300 ms padding
    spoken_ms = len(audio) // 48 - 1500
    assert spoken_ms - 800 <= stopped["audio_end_ms"] <= spoken_ms + 700
    assert started["item_id"] == stopped["item_id"] == committed["item_id"] and committed["previous_item_id"] is None


def test_manual_commit_and_clear_without_turn_detection(server):
    tone = (np.sin(np.arange(12000) / 24000 * 2 * np.pi * 440) * 8000).astype("<i2").tobytes()  # 0.5 s
    with session(server) as ws:
        receive(ws)
        send(ws, {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
        receive(ws)
        send(ws, {"type": "input_audio_buffer.append", "audio": base64.b64encode(tone).decode()})
        send(ws, {"type": "input_audio_buffer.commit"})
        first = receive(ws)
        assert first["type"] == "input_audio_buffer.committed" and first["previous_item_id"] is None
        send(ws, {"type": "input_audio_buffer.append", "audio": base64.b64encode(tone).decode()})
        send(ws, {"type": "input_audio_buffer.commit"})
        assert receive(ws)["previous_item_id"] == first["item_id"]
        send(ws, {"type": "input_audio_buffer.append", "audio": base64.b64encode(tone).decode()})
        send(ws, {"type": "input_audio_buffer.clear"})
        assert receive(ws)["type"] == "input_audio_buffer.cleared"
        send(ws, {"type": "input_audio_buffer.commit", "event_id": "c1"})  # nothing left to commit
        error = receive(ws)
        assert error["type"] == "error" and error["error"]["event_id"] == "c1"


@pytest.mark.parametrize("event, code, param", [
    ({"type": "conversation.dance", "event_id": "e1"}, "invalid_request_error", "type"),
    ({"type": "input_audio_buffer.append", "audio": "not base64!", "event_id": "e1"}, "invalid_base64", "audio"),
    ({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode(), "event_id": "e1"},
     "invalid_audio_format", "audio"),
    ({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/mp3"}}}}, "event_id": "e1"},
     "invalid_request_error", "session.audio.input.format.type"),
    ({"type": "session.update", "session": {"temperature": 9}, "event_id": "e1"}, "invalid_request_error",
     "session.temperature"),
])
def test_a_bad_event_is_an_error_event_and_the_session_goes_on(server, event, code, param):
    with session(server) as ws:
        receive(ws)
        send(ws, event)
        error = receive(ws)
        assert error["type"] == "error", error
        detail = error["error"]
        assert detail["code"] == code and detail["param"] == param and detail["event_id"] == "e1"
        assert error["error"]["message"]
        send(ws, {"type": "session.update", "session": {"instructions": "still here"}})
        assert receive(ws)["session"]["instructions"] == "still here"


def test_text_that_is_not_json_and_an_unknown_model(server):
    with session(server) as ws:
        receive(ws)
        ws.send("hello")
        assert "not JSON" in receive(ws)["error"]["message"]
        ws.send(b"\x00\x01")
        assert "binary frames" in receive(ws)["error"]["message"]
        send(ws, {"type": "input_audio_buffer.clear"})
        assert receive(ws)["type"] == "input_audio_buffer.cleared"  # the session goes on
    with connect(url(server, "?model=gpt-nope"), additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        error = receive(ws)
        assert error["type"] == "error" and error["error"]["code"] == "model_not_found"
