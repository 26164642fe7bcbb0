"""Custom voices through the official `openai` SDK against a real server: a consent recording must say the
consent statement (Whisper hears it), a voice sample must be the consent's speaker (speaker embeddings), both
outlive a restart, deleting the consent stops its voices, and every bad upload is a 400 in the envelope. The
recordings are Kokoro's voices, made by the same server."""

from __future__ import annotations

import io
import uuid

import numpy as np
import openai
import pytest
import soundfile as sf

from tests.conftest import MODEL_DATA, run_server

STATEMENT = "I am aware that recordings of my voice will be used to create and use a synthetic version of my voice."
SAMPLE_TEXT = ("The lighthouse keeper climbed the stairs at dusk. He lit the great lamp and watched the ships "
               "sail past the rocks.")


def data_dir(tmp_path_factory):
    """A data dir of its own (an empty voice library) that shares the models the other tests made."""
    folder = tmp_path_factory.mktemp("voices-data")
    (folder / "models").symlink_to(MODEL_DATA / "models")
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return data_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory):
    with run_server("--data-dir", str(folder), tmp_path=tmp_path_factory.mktemp("voices-log")) as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return server.openai()


@pytest.fixture(scope="module")
def http(server):
    with server.http() as c:
        yield c


def say(client, voice: str, text: str, fmt: str = "wav") -> bytes:
    return client.audio.speech.create(model="tts-1-hd", voice=voice, input=text, response_format=fmt).content


@pytest.fixture(scope="module")
def consent(client):
    """am_michael saying the statement, as an mp3."""
    recording = say(client, "am_michael", STATEMENT, "mp3")
    return client.audio.voice_consents.create(name="Michael", recording=("consent.mp3", recording, "audio/mpeg"),
                                              language="en-US")


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def error_of(exc: pytest.ExceptionInfo) -> dict:
    assert exc.value.status_code == 400, exc.value
    return exc.value.body


def test_a_consent_that_says_the_statement_is_kept(client, consent):
    assert consent.id.startswith("cons_") and consent.object == "audio.voice_consent"
    assert (consent.name, consent.language) == ("Michael", "en-US")
    assert client.audio.voice_consents.retrieve(consent.id).id == consent.id
    renamed = client.audio.voice_consents.update(consent.id, name="Michael R.")
    assert renamed.name == "Michael R." and client.audio.voice_consents.retrieve(consent.id).name == "Michael R."
    assert consent.id in [c.id for c in client.audio.voice_consents.list()]


def test_a_consent_saying_another_sentence_is_refused(client):
    other = say(client, "am_michael", "The weather is lovely today and I would like to go for a long walk.")
    with pytest.raises(openai.BadRequestError) as exc:
        client.audio.voice_consents.create(name="x", recording=("c.wav", other, "audio/wav"), language="en-US")
    body = error_of(exc)
    assert body["code"] == "consent_statement_not_said" and body["param"] == "recording"
    assert "I am aware that recordings of my voice" in body["message"]


def test_a_voice_by_the_consents_speaker_is_made_and_another_speaker_is_refused(client, http, consent):
    name = unique("michael")
    sample = say(client, "am_michael", SAMPLE_TEXT)
    voice = client.audio.voices.create(name=name, audio_sample=("s.wav", sample, "audio/wav"), consent=consent.id)
    assert voice.id.startswith("voice_") and voice.object == "audio.voice" and voice.name == name
    assert http.get(f"/v1/audio/voices/{voice.id}").json()["name"] == name
    listed = {v["id"]: v for v in http.get("/v1/audio/voices").json()["data"]}
    assert listed[voice.id]["enabled"] and listed[voice.id]["consent"] == consent.id
    with pytest.raises(openai.BadRequestError) as exc:
        client.audio.voices.create(name=unique("heart"), audio_sample=("s.wav", say(client, "af_heart", SAMPLE_TEXT),
                                                                       "audio/wav"), consent=consent.id)
    body = error_of(exc)
    assert body["code"] == "speaker_mismatch" and body["param"] == "audio_sample" and "similarity" in body["message"]
    with pytest.raises(openai.BadRequestError) as exc:  # the name is taken
        client.audio.voices.create(name=name.upper(), audio_sample=("s.wav", sample, "audio/wav"), consent=consent.id)
    assert error_of(exc)["param"] == "name"


def test_vllm_omni_upload_transcribes_the_sample(http, client, consent):
    sample = say(client, "am_michael", SAMPLE_TEXT)
    r = http.post("/v1/audio/voice/upload", files={"audio_sample": ("s.wav", sample, "audio/wav")},
                  data={"name": unique("upload"), "consent": consent.id})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] and body["voice"]["id"].startswith("voice_") and body["voice"]["file_size"] == len(sample)
    assert "lighthouse keeper" in body["voice"]["ref_text"].lower()  # heard by the speech-to-text stage
    assert http.delete(f"/v1/audio/voices/{body['voice']['name']}").json()["deleted"]  # by name, as vLLM-Omni


def test_a_custom_voice_needs_a_model_that_clones(client, http, consent, server):
    sample = say(client, "am_michael", SAMPLE_TEXT)
    voice = client.audio.voices.create(name=unique("c"), audio_sample=("s.wav", sample, "audio/wav"),
                                       consent=consent.id)
    with pytest.raises(openai.BadRequestError) as exc:
        client.audio.speech.create(model="tts-1-hd", voice={"id": voice.id}, input="Hello.")
    body = error_of(exc)
    assert body["code"] == "voice_needs_cloning" and "kokoro-82m cannot clone" in body["message"]
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                 "modalities": ["text", "audio"],
                                                 "audio": {"voice": voice.name, "format": "wav"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "audio.voice"
    from tests.realtime_helpers import open_session, receive, send

    with open_session(server.base_url) as ws:
        receive(ws)
        send(ws, {"type": "session.update", "session": {"audio": {"output": {"voice": voice.id}}}})
        error = receive(ws)["error"]
        assert error["param"] == "session.audio.output.voice" and "clone" in error["message"]


def wav(seconds: float, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(out, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV")
    return out.getvalue()


@pytest.mark.parametrize(("files", "data", "param", "says"), [
    ({}, {"name": "x", "language": "en-US"}, "recording", "required"),
    ({"recording": ("c.wav", b"", "audio/wav")}, {"name": "x", "language": "en-US"}, "recording", "empty"),
    ({"recording": ("c.wav", b"not audio at all", "audio/wav")}, {"name": "x", "language": "en-US"}, "recording",
     "decode"),
    ({"recording": ("c.wav", wav(1.0), "audio/wav")}, {"name": "x", "language": "en-US"}, "recording", "2 to 30 s"),
    ({"recording": ("c.wav", wav(31.0), "audio/wav")}, {"name": "x", "language": "en-US"}, "recording", "2 to 30 s"),
    ({"recording": ("c.wav", b"\0" * (10 * 1024 * 1024 + 1), "audio/wav")}, {"name": "x", "language": "en-US"},
     "recording", "10 MiB"),
    ({"recording": ("c.wav", wav(3.0), "audio/wav")}, {"name": "x", "language": "tlh"}, "language", "statement"),
    ({"recording": ("c.wav", wav(3.0), "audio/wav")}, {"name": "x", "language": "fr-FR"}, "language", "English-only"),
    ({"recording": ("c.wav", wav(3.0), "audio/wav")}, {"language": "en-US"}, "name", "required"),
])
def test_bad_consent_uploads_are_400s(http, files, data, param, says):
    r = http.post("/v1/audio/voice_consents", files=files or {"unused": ("u", b"", "text/plain")}, data=data)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and says in error["message"], error


def test_bad_voice_uploads_are_400s(http, consent):
    def post(files, data):
        r = http.post("/v1/audio/voices", files=files, data=data)
        assert r.status_code == 400, r.text
        return r.json()["error"]

    sample = {"audio_sample": ("s.wav", wav(5.0), "audio/wav")}
    assert post(sample, {"name": "x", "consent": "cons_nobody"})["code"] == "consent_not_found"
    assert post(sample, {"name": "alloy", "consent": consent.id})["param"] == "name"
    assert post(sample, {"name": "a+b", "consent": consent.id})["param"] == "name"
    assert post({"audio_sample": ("s.wav", wav(2.0), "audio/wav")},
                {"name": "x", "consent": consent.id})["code"] == "audio_duration"
    assert post({"f": ("s.wav", wav(5.0), "audio/wav")}, {"name": "x", "consent": consent.id})["param"] == \
        "audio_sample"
    r = http.post("/v1/audio/voices", json={"name": "x", "consent": consent.id})
    assert r.status_code == 400 and r.json()["error"]["param"] == "audio_sample"
    assert http.get("/v1/audio/voices/voice_nobody").status_code == 404
    assert http.get("/v1/audio/voice_consents/cons_nobody").json()["error"]["code"] == "consent_not_found"


def test_voices_survive_a_restart_and_deleting_the_consent_stops_them(client, folder, tmp_path):
    recording = say(client, "bm_george", STATEMENT)
    consent = client.audio.voice_consents.create(name="George", recording=("c.wav", recording, "audio/wav"),
                                                 language="en-GB")
    sample = say(client, "bm_george", SAMPLE_TEXT)
    voice = client.audio.voices.create(name=unique("george"), audio_sample=("s.wav", sample, "audio/wav"),
                                       consent=consent.id)
    with run_server("--data-dir", str(folder), "--vision-model", "none", "--embedding-model", "none",
                    tmp_path=tmp_path) as second:  # a second server on the same data dir, then a restart of it
        other = second.openai()
        assert other.audio.voice_consents.retrieve(consent.id).name == "George"
        assert second.http().get(f"/v1/audio/voices/{voice.id}").json()["name"] == voice.name
        assert other.audio.voice_consents.delete(consent.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.audio.voice_consents.retrieve(consent.id)
    listed = {v["id"]: v for v in client.with_options().get("/audio/voices", cast_to=object)["data"]}
    assert listed[voice.id]["enabled"] is False
    with pytest.raises(openai.BadRequestError) as exc:
        client.audio.speech.create(model="tts-1-hd", voice={"id": voice.id}, input="Hello.")
    assert error_of(exc)["code"] == "voice_disabled"
    files = sorted(p.name for p in (folder / "voices").iterdir() if not p.name.startswith("library"))
    assert not any(p.startswith(consent.id) or p.startswith(voice.id) for p in files)  # its recordings are gone
