"""Many real voices through the default server: Kokoro-82M's 54 voices (tts-1-hd) beside the Piper voice
(tts-1), blends, languages and speed, checked against kokoro-onnx itself and heard back through Whisper."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf

from tests.audio_helpers import decode, wer
from tests.conftest import MODEL_DATA

TEXT = "The weather is nice today, and the sky is blue."
SHORT = "The sky is blue today."  # one chunk: no clause, fewer than eight words


def speech(http, voice, text: str = TEXT, model: str = "tts-1-hd", fmt: str = "wav", **extra) -> bytes:
    r = http.post("/v1/audio/speech", json={"model": model, "input": text, "voice": voice, "response_format": fmt,
                                            **extra})
    assert r.status_code == 200, r.text
    return r.content


def pcm(data: bytes) -> np.ndarray:
    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 24000
    return samples


def pitch_hz(samples: np.ndarray, rate: int = 24000) -> float:
    """The median fundamental frequency of the loud frames (autocorrelation, 70-400 Hz)."""
    x = samples.astype(np.float32) / 32768
    frame, pitches = 1024, []
    loud = 0.3 * np.sqrt(np.mean(x ** 2))
    for start in range(0, len(x) - frame, frame // 2):
        window = x[start:start + frame]
        if np.sqrt(np.mean(window ** 2)) < loud:
            continue
        corr = np.correlate(window, window, "full")[frame - 1:]
        low, high = rate // 400, rate // 70
        lag = low + int(np.argmax(corr[low:high]))
        if corr[lag] > 0.3 * corr[0]:
            pitches.append(rate / lag)
    return float(np.median(pitches))


@pytest.fixture(scope="module")
def kokoro():
    """kokoro-onnx's own synthesis, on the files the server serves."""
    from kokoro_onnx import Kokoro

    from omniserve.models.kokoro import assemble_model, installed_voices_path

    return Kokoro(str(assemble_model(MODEL_DATA)), str(installed_voices_path()))


def test_voices_list_every_voice_with_its_model_language_and_gender(http):
    body = http.get("/v1/audio/voices").json()
    kokoro = [v for v in body["data"] if v["model"] == "kokoro-82m"]
    assert len(kokoro) == 54 and body["voices"][0] == "en_US-joe-medium"
    by_id = {v["id"]: v for v in kokoro}
    assert by_id["af_heart"]["default"] and by_id["af_heart"]["sample_rate"] == 24000
    assert (by_id["bm_fable"]["language"], by_id["bm_fable"]["gender"]) == ("en-GB", "male")
    assert (by_id["ff_siwis"]["language"], by_id["zf_xiaobei"]["language"], by_id["jm_kumo"]["gender"]) == (
        "fr-FR", "zh", "male")
    assert len([v for v in kokoro if v["language"] in ("en-US", "en-GB")]) == 28
    aliases = [a for v in kokoro for a in v["aliases"]]
    assert sorted(aliases) == sorted(["alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
                                      "shimmer", "verse", "marin", "cedar"])  # each a voice of its own
    assert by_id["af_alloy"]["aliases"] == ["alloy"] and by_id["am_onyx"]["aliases"] == ["onyx"]


def test_served_speech_equals_kokoro_onnx(http, kokoro):
    """The served audio is kokoro-onnx's for the same text and voice; then the pause a sentence ends with."""
    served = pcm(speech(http, "af_sky", "Hello there, how are you today?"))
    audio, _ = kokoro.create("Hello there, how are you today?", voice="af_sky", lang="en-us")
    reference = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    assert len(served) == len(reference) + round(0.25 * 24000)
    assert np.abs(served[:len(reference)].astype(int) - reference).max() <= 1
    assert not served[len(reference):].any()


def test_openai_names_are_distinct_voices(http, kokoro):
    spoken = {name: pcm(speech(http, name)) for name in ("alloy", "nova", "echo", "onyx")}
    reference, _ = kokoro.create(SHORT, voice="af_nova", lang="en-us")
    nova = pcm(speech(http, "nova", SHORT))
    assert np.abs(nova[:len(reference)] - (np.clip(reference, -1, 1) * 32767).astype(int)).max() <= 1
    pitches = {name: pitch_hz(samples) for name, samples in spoken.items()}
    assert min(pitches["alloy"], pitches["nova"]) > max(pitches["echo"], pitches["onyx"]) + 20, pitches
    assert len({samples.tobytes() for samples in spoken.values()}) == 4


def test_a_blend_is_the_weighted_voices(http, kokoro):
    served = pcm(speech(http, "af_bella(2)+am_adam(1)", "Good morning."))
    style = (kokoro.voices["af_bella"] * np.float32(2 / 3) + kokoro.voices["am_adam"] * np.float32(1 / 3))
    audio, _ = kokoro.create("Good morning.", voice=style.astype(np.float32), lang="en-us")
    reference = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    assert np.abs(served[:len(reference)].astype(int) - reference).max() <= 2
    even = pcm(speech(http, "af_bella+am_adam", "Good morning."))
    assert even.tobytes() != served.tobytes()


def test_language_comes_from_the_voice_or_the_request(http, kokoro):
    french = pcm(speech(http, "ff_siwis", "Bonjour, comment allez-vous?"))
    audio, _ = kokoro.create("Bonjour, comment allez-vous?", voice="ff_siwis", lang="fr-fr")
    assert np.abs(french[:len(audio)] - (np.clip(audio, -1, 1) * 32767).astype(int)).max() <= 1
    as_english = pcm(speech(http, "ff_siwis", "Bonjour, comment allez-vous?", language="en"))
    audio, _ = kokoro.create("Bonjour, comment allez-vous?", voice="ff_siwis", lang="en-us")
    assert np.abs(as_english[:len(audio)] - (np.clip(audio, -1, 1) * 32767).astype(int)).max() <= 1


def test_speed(http):
    normal, fast = (len(pcm(speech(http, "af_heart", TEXT, speed=s))) for s in (1.0, 2.0))
    slow = len(pcm(speech(http, "af_heart", TEXT, speed=0.25)))  # beyond kokoro-onnx's 0.5-2: the model's own
    assert 0.4 < fast / normal < 0.65 and slow / normal > 2.5


def test_whisper_hears_what_kokoro_says(client):
    sentences = ["The quick brown fox jumps over the lazy dog.", "Please call me back tomorrow morning.",
                 "I would like a cup of coffee with milk."]
    for voice in ("af_heart", "am_michael", "bf_emma", "bm_george"):
        heard = []
        for text in sentences:
            audio = client.audio.speech.create(model="tts-1-hd", voice=voice, input=text, response_format="wav")
            heard.append(client.audio.transcriptions.create(model="whisper-1", file=("a.wav", audio.content)).text)
        assert wer(sentences, heard) <= 0.15, (voice, heard)


def test_streamed_by_clause_and_whole_agree(http):
    text = "First, a short clause. Then a second sentence follows it. And a third one ends the answer."
    whole = pcm(speech(http, "am_echo", text, fmt="wav"))
    chunks = []
    with http.stream("POST", "/v1/audio/speech", json={"model": "tts-1-hd", "input": text, "voice": "am_echo",
                                                         "response_format": "pcm", "stream_format": "audio"}) as r:
        assert r.status_code == 200 and r.headers["x-sample-rate"] == "24000"
        chunks = [c for c in r.iter_bytes() if c]
    streamed = np.frombuffer(b"".join(chunks), dtype=np.int16)
    assert len(chunks) >= 3 and np.array_equal(streamed, whole)


def test_voice_errors_name_the_valid_voices(http):
    def error(body):
        r = http.post("/v1/audio/speech", json={"input": "Hi.", **body})
        assert r.status_code == 400, r.text
        return r.json()["error"]

    unknown = error({"model": "tts-1-hd", "voice": "af_nobody"})
    assert unknown["param"] == "voice" and "af_bella" in unknown["message"] and "blend" in unknown["message"]
    assert "af_sky" not in error({"model": "tts-1", "voice": "af_sky"})["message"].split("valid voices are")[1]
    assert "voice(weight)" in error({"model": "tts-1-hd", "voice": "af_bella(2)+"})["message"]
    assert "unknown voice" in error({"model": "tts-1-hd", "voice": "af_bella+af_nobody"})["message"]
    assert error({"model": "tts-1-hd", "voice": "alloy", "language": "klingon"})["param"] == "language"
    assert error({"model": "tts-1", "voice": "alloy", "language": "fr"})["param"] == "language"
    assert error({"model": "tts-1-hd", "voice": "alloy", "noise_scale": 0.5})["param"] == "noise_scale"
    by_model = error({"voice": "nobody"})["message"]  # no model named: every model's voices
    assert "piper-joe-medium:" in by_model and "kokoro-82m:" in by_model


def test_no_model_named_the_voice_picks_the_model(http):
    rate, _, _ = decode(http.post("/v1/audio/speech", json={"input": "Hi.", "voice": "bf_alice"}).content)
    assert rate == 24000
    rate, _, _ = decode(http.post("/v1/audio/speech", json={"input": "Hi.", "voice": "alloy"}).content)
    assert rate == 22050  # an OpenAI name: the first voice model, the fast one
    assert http.post("/v1/audio/speech", json={"input": "Hi.", "voice": {"id": "nova"}}).status_code == 200


def test_chat_speaks_with_the_voice_it_names(client):
    for voice, rate in (("af_nova", 24000), ("alloy", 22050), ("bm_fable(1)+bf_emma(1)", 24000)):
        r = client.chat.completions.create(model="smollm2-135m", modalities=["text", "audio"],
                                           audio={"voice": voice, "format": "wav"}, max_tokens=12,
                                           messages=[{"role": "user", "content": "Say hello."}])
        got, seconds, _ = decode(base64.b64decode(r.choices[0].message.audio.data))
        assert (got, seconds > 0.3) == (rate, True), voice


def spoken_by(http, stage: str) -> float:
    """Requests that stage has sent first audio for (the Prometheus count)."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("omniserve_time_to_first_audio_seconds_count") and f'stage="{stage}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_realtime_session_speaks_with_its_voice(server, http):
    from tests.integration.test_realtime import text_item
    from tests.realtime_helpers import audio_of, next_of, open_session, receive, send, until

    before = spoken_by(http, "talker_kokoro"), spoken_by(http, "talker")
    with open_session(server.base_url) as ws:
        receive(ws)
        send(ws, {"type": "session.update", "session": {"audio": {"output": {"voice": "bf_emma"}}}})
        assert next_of(ws, "session.updated")["session"]["audio"]["output"]["voice"] == "bf_emma"
        send(ws, text_item("Say hello."))
        send(ws, {"type": "response.create", "response": {"max_output_tokens": 16}})
        events = until(ws, "response.done")
        assert len(audio_of(events)) > 24000  # more than half a second of pcm16 at 24 kHz
        send(ws, {"type": "session.update", "session": {"audio": {"output": {"voice": "af_bella+nobody"}}}})
        assert receive(ws)["error"]["param"] == "session.audio.output.voice"
    assert (spoken_by(http, "talker_kokoro"), spoken_by(http, "talker")) == (before[0] + 1, before[1])
