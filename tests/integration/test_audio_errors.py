"""Every bad speech input is a 4xx in the OpenAI envelope, never a 500."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import run_server


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def error(r, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def transcribe(http, data: bytes, name: str = "a.wav", **fields):
    return http.post("/v1/audio/transcriptions", files={"file": (name, data)}, data=fields)


def test_undecodable_and_empty_audio(http):
    for data in (b"this is not audio at all" * 20, b""):
        err = error(transcribe(http, data))
        assert err["param"] == "file" and "wav" in err["message"] and "mp3" in err["message"]


def test_transcription_field_errors(http):
    assert "file" in error(http.post("/v1/audio/transcriptions", files={"x": ("a", b"1")}, data={}))["message"]
    assert "multipart" in error(http.post("/v1/audio/transcriptions", json={"file": "x"}))["message"]
    err = error(transcribe(http, wav_bytes(1), response_format="docx"))
    assert err["param"] == "response_format"
    assert error(transcribe(http, wav_bytes(1), temperature="7"))["param"] == "temperature"
    assert "English-only" in error(transcribe(http, wav_bytes(1), language="de"))["message"]
    assert error(transcribe(http, wav_bytes(1), model="smollm2-135m"))["param"] == "model"
    assert error(transcribe(http, wav_bytes(1), model="nope"), 404)["code"] == "model_not_found"


def test_translation_needs_a_multilingual_model(http):
    err = error(http.post("/v1/audio/translations", files={"file": ("a.wav", wav_bytes(1))}))
    assert "cannot translate" in err["message"]


@pytest.mark.parametrize("body, param, words", [
    ({"input": ""}, "input", "empty"),
    ({"input": "   "}, "input", "empty"),
    ({"input": "x" * 4097}, "input", "4096"),
    ({"input": "Hi.", "speed": 5}, "speed", "4"),
    ({"input": "Hi.", "speed": 0.1}, "speed", "0.25"),
    ({"input": "Hi.", "voice": "bob"}, "voice", "en_US-joe-medium, alloy"),
    ({"input": "Hi.", "response_format": "ogg"}, "response_format", "mp3"),
    ({"input": "Hi.", "model": "whisper-1"}, "model", "speech-to-text"),
])
def test_speech_bad_input(http, body, param, words):
    err = error(http.post("/v1/audio/speech", json=body))
    assert err["param"] == param and words in err["message"], err


def test_chat_audio_bad_input(http):
    def chat(content, **extra):
        return http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}],
                                                       "max_tokens": 5, **extra})

    part = {"type": "input_audio", "input_audio": {"data": "%%%not base64", "format": "wav"}}
    err = error(chat([{"type": "text", "text": "hi"}, part]))
    assert err["param"] == "messages[0].content[1].data"
    junk = {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"junk" * 50).decode()}}
    assert error(chat([junk]))["param"] == "messages[0].content[0]"
    local = {"type": "audio_url", "audio_url": {"url": "http://127.0.0.1:9/a.wav"}}
    assert "private" in error(chat([local]))["message"]
    assert error(chat([{"type": "audio_url", "audio_url": {"url": "file:///etc/passwd"}}]))["param"] == \
        "messages[0].content[0]"
    assert "stage" in error(chat("hi", stage_sampling={"painter": {"x": 1}}))["message"]
    assert error(chat("hi", stage_sampling={"talker": {"speed": 9}}))["param"] == "stage_sampling.talker.speed"
    assert error(chat("hi", stage_sampling={"thinker": {"temperature": 9}}))["param"] == \
        "stage_sampling.thinker.temperature"
    assert error(chat("hi", modalities=["text", "audio"], n=17))["param"] == "n"
    assert error(chat("hi", modalities=["text", "audio"], audio={"voice": "bob"}))["param"] == "audio.voice"
    assert error(chat("hi", audios=[123]))["param"].startswith("audios")


def test_limits_and_stages_turned_off(tmp_path):
    with run_server("--max-audio-seconds", "2", "--max-request-bytes", "200000", "--tts-model", "none",
                    "--vision-model", "none", tmp_path=tmp_path) as server, server.http() as http:
        err = error(transcribe(http, wav_bytes(3)))
        assert "2 seconds" in err["message"] and "--max-audio-seconds" in err["message"]
        assert transcribe(http, wav_bytes(1.5)).status_code == 200
        assert error(transcribe(http, wav_bytes(8)), 413)["code"]  # 256 kB > the body limit
        assert "no text-to-speech" in error(http.post("/v1/audio/speech", json={"input": "Hi."}))["message"]
        r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                    "modalities": ["text", "audio"]})
        assert error(r)["param"] == "modalities"
        ids = [m["id"] for m in http.get("/v1/models").json()["data"]]
        assert ids == ["smollm2-135m", "whisper-tiny.en", "all-MiniLM-L6-v2"]
        r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                    "images": ["https://example.com/cat.png"]})
        assert error(r)["param"] == "images[0]" and "--vision-model none" in error(r)["message"]
