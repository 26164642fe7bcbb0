"""Speech in and out against the real server: Whisper tiny.en, the Piper joe voice, SmolLM2."""

from __future__ import annotations

import base64
import json
import time

import pytest

from tests.audio_helpers import decode, librivox_clips, wer
from tests.conftest import idle, wait_until

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back tomorrow morning.",
    "The weather is nice today and the sky is blue.",
    "I would like a cup of coffee with milk.",
]
THREE = "The weather is nice today. I will walk to the park. Then I will read a book."


def speak(http, text: str, fmt: str = "wav", **extra) -> bytes:
    r = http.post("/v1/audio/speech", json={"model": "tts-1", "input": text, "voice": "alloy",
                                            "response_format": fmt, **extra})
    assert r.status_code == 200, r.text
    return r.content


def test_models_list_speech_ids(http):
    models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert models["whisper-tiny.en"]["type"] == "asr" and "whisper-1" in models["whisper-tiny.en"]["aliases"]
    assert models["piper-joe-medium"]["type"] == "tts"
    assert models["piper-joe-medium"]["aliases"] == ["tts-1"]  # the fast voice model
    assert models["kokoro-82m"]["type"] == "tts"
    assert models["kokoro-82m"]["aliases"] == ["tts-1-hd", "gpt-4o-mini-tts"]  # the better one


def test_transcribe_librivox_wer(client):
    clips = librivox_clips()
    assert len(clips) >= 5
    hypotheses = []
    for wav, _ in clips:
        with wav.open("rb") as fh:
            hypotheses.append(client.audio.transcriptions.create(model="whisper-1", file=fh).text)
    score = wer([ref for _, ref in clips], hypotheses)
    assert score <= 0.10, (score, hypotheses)


def test_transcription_formats(http):
    wav, reference = librivox_clips()[0]
    files = {"file": (wav.name, wav.read_bytes(), "audio/wav")}
    text = http.post("/v1/audio/transcriptions", files=files, data={"response_format": "text"})
    assert text.headers["content-type"].startswith("text/plain")
    assert wer([reference], [text.text]) <= 0.2
    verbose = http.post("/v1/audio/transcriptions", files=files,
                        data={"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]})
    body = verbose.json()
    assert body["language"] == "english" and 6.5 < body["duration"] < 7.5
    assert body["segments"] and all(s["end"] > s["start"] >= 0 for s in body["segments"])
    assert body["words"] and body["words"][0]["word"].strip()
    srt = http.post("/v1/audio/transcriptions", files=files, data={"response_format": "srt"}).text
    assert srt.startswith("1\n00:00:00,000 --> ")
    vtt = http.post("/v1/audio/transcriptions", files=files, data={"response_format": "vtt"}).text
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")


def test_transcription_stream(http):
    wav, reference = librivox_clips()[0]
    with http.stream("POST", "/v1/audio/transcriptions", files={"file": (wav.name, wav.read_bytes())},
                     data={"stream": "true"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    assert len(deltas) >= 2  # one per segment, as each is decoded
    assert events[-1]["type"] == "transcript.text.done"
    assert events[-1]["text"] == "".join(deltas)  # the deltas add up to the text, with no leading space
    plain = http.post("/v1/audio/transcriptions", files={"file": (wav.name, wav.read_bytes())}).json()["text"]
    assert plain == events[-1]["text"]
    assert events[-1]["usage"]["type"] == "duration"
    assert wer([reference], [events[-1]["text"]]) <= 0.1


def test_tts_asr_round_trip(server, http):
    client = server.openai()
    hypotheses = []
    for sentence in SENTENCES:
        audio = client.audio.speech.create(model="tts-1", voice="alloy", input=sentence, response_format="wav")
        hypotheses.append(client.audio.transcriptions.create(model="whisper-1",
                                                             file=("speech.wav", audio.content)).text)
    score = wer(SENTENCES, hypotheses)
    assert score <= 0.15, (score, hypotheses)


@pytest.mark.parametrize("fmt", ["mp3", "wav", "flac", "opus", "aac", "pcm"])
def test_speech_formats_decode(http, fmt):
    # noise_w_scale 0: Piper then does not sample phoneme durations, so both renderings last the same.
    reference_rate, reference_seconds, _ = decode(speak(http, THREE, "wav", noise_w_scale=0))
    r = http.post("/v1/audio/speech", json={"input": THREE, "response_format": fmt, "noise_w_scale": 0})
    assert r.status_code == 200
    assert r.headers["x-sample-rate"] == "22050"
    expected_type = {"mp3": "audio/mpeg", "wav": "audio/wav", "flac": "audio/flac", "opus": "audio/ogg",
                     "aac": "audio/aac", "pcm": "audio/pcm"}[fmt]
    assert r.headers["content-type"] == expected_type
    if fmt == "pcm":
        rate, seconds = 22050, len(r.content) / 2 / 22050
    else:
        rate, seconds, _ = decode(r.content)
    assert rate == (48000 if fmt == "opus" else reference_rate)  # Opus always decodes at 48 kHz
    assert abs(seconds - reference_seconds) < 0.25, (fmt, seconds, reference_seconds)  # codec padding
    assert seconds > 2


def test_speech_default_is_mp3(http):
    r = http.post("/v1/audio/speech", json={"input": "Hello.", "voice": "echo"})
    assert r.headers["content-type"] == "audio/mpeg"
    assert decode(r.content)[0] == 22050


def test_speech_speed(http):
    normal = decode(speak(http, THREE))[1]
    fast = decode(speak(http, THREE, speed=2.0))[1]
    assert 0.4 < fast / normal < 0.75


def test_speech_streams_sentence_by_sentence(http):
    t0 = time.perf_counter()
    arrivals, body = [], b""
    with http.stream("POST", "/v1/audio/speech",
                     json={"input": THREE, "response_format": "mp3", "stream_format": "audio"}) as r:
        assert r.status_code == 200 and "content-length" not in r.headers
        for chunk in r.iter_raw():
            arrivals.append(time.perf_counter() - t0)
            body += chunk
    assert len(arrivals) >= 3  # at least one chunk per sentence
    assert arrivals[0] < arrivals[-1]
    # Piper samples phoneme durations (noise_w), so two renderings differ by a little.
    assert abs(decode(body)[1] - decode(speak(http, THREE, "mp3"))[1]) < 0.4


def test_speech_sse(http):
    with http.stream("POST", "/v1/audio/speech",
                     json={"input": THREE, "response_format": "wav", "stream_format": "sse"}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) >= 3
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["input_tokens"] == len(THREE)
    _, seconds, _ = decode(b"".join(base64.b64decode(e["audio"]) for e in deltas))
    assert seconds > 2


# ---- chat with audio ---------------------------------------------------------------------


# Piper without its sampling noise: one rendering, which Whisper hears right (a sampled one is misheard now and
# then, "France" as "friends", which would make the answer tests flaky)
STEADY = {"noise_scale": 0, "noise_w_scale": 0}


def question_part(http, text: str = "What is the capital of France?") -> dict:
    mp3 = speak(http, text, "mp3", **STEADY)
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(mp3).decode(), "format": "mp3"}}


def test_chat_input_audio_uses_the_question(client, http):
    reply = client.chat.completions.create(
        model="smollm2-135m", temperature=0, max_tokens=40,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Answer the question:"},
                                               question_part(http)]}],
    )
    assert "paris" in reply.choices[0].message.content.lower()
    assert reply.usage.prompt_tokens > 10


def test_chat_top_level_audios_and_audio_url(http):
    wav = speak(http, "What is the capital of France?", **STEADY)
    data_url = "data:audio/wav;base64," + base64.b64encode(wav).decode()
    for body in (
        {"messages": [{"role": "user", "content": "Answer the question:"}], "audios": [data_url]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Answer the question:"},
                                                   {"type": "audio_url", "audio_url": {"url": data_url}}]}]},
    ):
        r = http.post("/v1/chat/completions", json={**body, "temperature": 0, "max_tokens": 40})
        assert r.status_code == 200, r.text
        assert "paris" in r.json()["choices"][0]["message"]["content"].lower()


def test_chat_audio_out(client):
    reply = client.chat.completions.create(
        model="smollm2-135m", temperature=0, max_tokens=40, modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "Answer the question: What is the capital of France?"}],
    )
    message = reply.choices[0].message
    assert message.audio.transcript == message.content and "Paris" in message.content
    assert message.audio.expires_at > time.time() and message.audio.id
    rate, seconds, _ = decode(base64.b64decode(message.audio.data))
    assert rate == 22050 and seconds > 1


def test_chat_audio_out_streams_before_text_ends(client):
    t0 = time.perf_counter()
    text_times, audio_times, audio, transcript, text = [], [], b"", "", ""
    stream = client.chat.completions.create(
        model="smollm2-135m", temperature=0, max_tokens=120, stream=True, modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "mp3"},
        messages=[{"role": "user", "content": "Write five short sentences about the sea."}],
    )
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        finish = chunk.choices[0].finish_reason or finish
        if delta.content:
            text_times.append(time.perf_counter() - t0)
            text += delta.content
        if delta.audio:
            audio_times.append(time.perf_counter() - t0)
            audio += base64.b64decode(delta.audio.data)
            transcript += delta.audio.transcript
    assert finish in ("stop", "length")
    assert audio_times and text_times
    assert audio_times[0] < text_times[-1], "the first audio must not wait for the whole text"
    assert transcript.split() == text.split()
    assert decode(audio)[1] > 2


def test_stage_sampling_reaches_each_stage(http):
    def ask(stage_sampling):
        r = http.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Say a sentence about cats."}], "temperature": 0,
            "max_tokens": 30, "modalities": ["text", "audio"], "audio": {"format": "wav"},
            "stage_sampling": stage_sampling})
        assert r.status_code == 200, r.text
        return r.json()

    base = ask({})
    short = ask({"thinker": {"max_tokens": 3}})
    assert short["usage"]["completion_tokens"] <= 3
    fast = ask({"talker": {"speed": 2.0}})
    assert fast["choices"][0]["message"]["content"] == base["choices"][0]["message"]["content"]
    seconds = [decode(base64.b64decode(b["choices"][0]["message"]["audio"]["data"]))[1] for b in (base, fast)]
    assert seconds[1] < seconds[0] * 0.7


def test_voice_chat_disconnect_frees_every_stage(server, http):
    """Leaving a voice answer early aborts the thinker and the talker; the slot comes back."""
    for _ in range(3):
        with server.http() as h, h.stream("POST", "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "Write a long story about the sea."}],
                "max_tokens": 300, "ignore_eos": True, "stream": True, "modalities": ["text", "audio"]}) as r:
            for line in r.iter_lines():
                if '"audio"' in line:
                    break
    wait_until(lambda: http.get("/get_load").json()["running"] == 0, timeout=5)


def test_no_request_left_running(http):
    """Every speech request above released its slot (runs last in this file)."""
    wait_until(lambda: idle(http), timeout=10)
