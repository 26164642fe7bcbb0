"""Voice cloning with Pocket TTS, on a tiny random-weight checkpoint built here (`scripts/make_tiny_tts.py`):
the served audio equals transformers' own `generate` for the same seed, with a built-in voice and with a
custom voice of the voice library; two samples give two voices; streamed chunks join to the whole answer;
concurrent requests (batched in one step) answer as they do alone; chat and realtime speak custom voices.
The speech itself is noise: the weights are random."""

from __future__ import annotations

import io
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
import soundfile as sf

from tests.conftest import MODEL_DATA, ROOT, run_server
from tests.integration.test_realtime import text_item
from tests.integration.test_voice_library import SAMPLE_TEXT, STATEMENT, data_dir, unique
from tests.realtime_helpers import audio_of, open_session, receive, send, until

MODEL = "tiny-pocket-tts"
TEXT = "Hello there. How are you doing on this fine day?"
SENTENCES = ["Hello there.", "How are you doing on this fine day?"]  # as the server cuts TEXT


@pytest.fixture(scope="module")
def checkpoint():
    out = MODEL_DATA / MODEL
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_tts.py"), str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return data_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def server(checkpoint, folder, tmp_path_factory):
    # Kokoro makes the consent recordings and samples; Pocket TTS speaks the custom voices
    with run_server("--data-dir", str(folder), "--tts-model", str(checkpoint), "kokoro-82m",
                    "--embedding-model", "none", "--vision-model", "none",
                    tmp_path=tmp_path_factory.mktemp("cloning")) as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return server.openai()


class Reference:
    """transformers' Pocket TTS on the same checkpoint, in this process: one `generate` per sentence, one seed
    for the whole answer, decoded by the processor."""

    def __init__(self, checkpoint):
        import torch
        from transformers import PocketTTSForConditionalGeneration, PocketTTSProcessor

        self.torch = torch
        self.processor = PocketTTSProcessor.from_pretrained(checkpoint)
        self.model = PocketTTSForConditionalGeneration.from_pretrained(checkpoint).eval()

    def speak(self, sentences: list[str], seed: int, voice=None, sample=None) -> np.ndarray:
        """`voice`: a built-in voice's latents; `sample`: a 24 kHz clip, given to the processor as audio."""
        self.torch.manual_seed(seed)
        parts = []
        for text in sentences:
            audio = {"type": "audio"} if sample is None else {"type": "audio", "audio": sample}
            conversation = [{"role": "user", "content": [audio, {"type": "text", "text": text}]}]
            if sample is None:
                prompt = self.processor.apply_chat_template(conversation)
                inputs = self.processor(text=prompt, audio_prompt_latents=[voice], return_tensors="pt")
            else:
                inputs = self.processor.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                                            return_tensors="pt")
            with self.torch.no_grad():
                out = self.model.generate(**inputs)
            parts.append(self.processor.decode(out.audio_latents, out.audio_latents_mask)[0].numpy())
        return (np.clip(np.concatenate(parts), -1, 1) * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def reference(checkpoint) -> Reference:
    return Reference(checkpoint)


def pcm(client, voice, seed: int, text: str = TEXT, model: str | None = MODEL) -> np.ndarray:
    extra = {"model": model} if model else {"model": "tts-1-hd"}
    data = client.audio.speech.create(**extra, voice=voice, input=text, response_format="pcm",
                                      extra_body={"seed": seed}).content
    return np.frombuffer(data, np.int16)


def assert_same(served: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float noise: one step of 16-bit rounding."""
    assert len(served) == len(expected) and len(served) > 0, (len(served), len(expected))
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 2


def say(client, kokoro_voice: str, text: str) -> bytes:
    return client.audio.speech.create(model="kokoro-82m", voice=kokoro_voice, input=text,
                                      response_format="wav").content


@pytest.fixture(scope="module")
def consents(client) -> dict[str, str]:
    """Consents of two speakers, Kokoro's am_michael and bf_emma."""
    return {name: client.audio.voice_consents.create(name=name, recording=("c.wav", say(client, name, STATEMENT),
                                                                           "audio/wav"), language=language).id
            for name, language in (("am_michael", "en-US"), ("bf_emma", "en-GB"))}


@pytest.fixture(scope="module")
def voices(client, consents):
    """A custom voice of each speaker, with its sample."""
    made = {}
    for name, consent in consents.items():
        sample = say(client, name, SAMPLE_TEXT)
        voice = client.audio.voices.create(name=unique(name), audio_sample=("s.wav", sample, "audio/wav"),
                                           consent=consent)
        made[name] = (voice, sf.read(io.BytesIO(sample), dtype="float32")[0])
    return made


def test_the_model_clones_and_lists_its_voices(server):
    models = {m["id"]: m for m in server.http().get("/v1/models").json()["data"]}
    assert models[MODEL]["type"] == "tts" and "tts-1-hd" in models[MODEL]["aliases"]
    listed = [v for v in server.http().get("/v1/audio/voices").json()["data"] if v.get("model") == MODEL]
    assert [v["id"] for v in listed] == ["alba", "marius"] and listed[0]["default"]


def test_a_built_in_voice_equals_transformers_generate(client, reference, checkpoint):
    from safetensors.torch import load_file

    alba = load_file(checkpoint / "voices" / "alba.safetensors")["audio_prompt_latents"]
    served = pcm(client, "alba", seed=7)
    assert_same(served, reference.speak(SENTENCES, 7, voice=alba))
    assert np.array_equal(pcm(client, "alba", seed=7), served)  # the same seed: the same audio
    assert not np.array_equal(pcm(client, "alba", seed=8)[:len(served)], served)
    assert not np.array_equal(pcm(client, "marius", seed=7)[:len(served)], served)


def test_a_custom_voice_equals_transformers_generate_on_its_sample(client, reference, voices):
    voice, sample = voices["am_michael"]
    served = pcm(client, {"id": voice.id}, seed=11, model=None)  # no model named: the one that clones
    assert_same(served, reference.speak(SENTENCES, 11, sample=sample))
    assert_same(pcm(client, voice.name, seed=11), served)  # by name too


def test_a_sample_is_encoded_once_when_its_voice_is_made_and_goes_with_it(client, voices, consents, folder):
    library = folder / "voices"
    for voice, _ in voices.values():
        kept = list(library.glob(f"{voice.id}.pocket-tts-*.prepared"))
        assert len(kept) == 1, sorted(p.name for p in library.iterdir())
    voice, _ = voices["am_michael"]
    sample = say(client, "am_michael", SAMPLE_TEXT)
    again = client.audio.voices.create(name=unique("again"), audio_sample=("s.wav", sample, "audio/wav"),
                                       consent=consents["am_michael"])
    assert list(library.glob(f"{again.id}.*.prepared"))
    client.with_options().delete(f"/audio/voices/{again.id}", cast_to=object)
    assert not list(library.glob(f"{again.id}.*"))


def test_two_samples_give_two_voices(client, voices):
    michael = pcm(client, {"id": voices["am_michael"][0].id}, seed=5)
    emma = pcm(client, {"id": voices["bf_emma"][0].id}, seed=5)
    assert len(michael) and len(emma) and (len(michael) != len(emma) or not np.array_equal(michael, emma))


def test_streamed_chunks_join_to_the_whole_answer(server, client):
    whole = pcm(client, "marius", seed=3)
    deltas = []
    with server.http() as http, http.stream("POST", "/v1/audio/speech", json={
            "model": MODEL, "voice": "marius", "input": TEXT, "response_format": "pcm", "stream_format": "sse",
            "seed": 3}) as r:
        assert r.status_code == 200
        import base64
        import json

        for line in r.iter_lines():
            if line.startswith("data: ") and '"speech.audio.delta"' in line:
                deltas.append(base64.b64decode(json.loads(line[6:])["audio"]))
    assert len(deltas) >= 4  # two sentences, each in a first short chunk and the rest
    assert np.array_equal(np.frombuffer(b"".join(deltas), np.int16), whole)


def test_concurrent_requests_answer_as_they_do_alone(client, voices):
    jobs = [("alba", 1, TEXT), ("marius", 2, "One two three four five six seven eight nine ten eleven."),
            ({"id": voices["bf_emma"][0].id}, 3, "Short one."), ("alba", 4, "A fourth answer, a little longer.")]
    alone = [pcm(client, voice, seed, text) for voice, seed, text in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: pcm(client, job[0], job[1], job[2]), jobs))
    for a, b in zip(alone, together, strict=True):
        assert_same(b, a)


def test_chat_and_realtime_speak_a_custom_voice(server, client, voices):
    voice = voices["am_michael"][0]
    answer = client.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "Hi!"}],
                                            modalities=["text", "audio"], max_tokens=12,
                                            audio={"voice": voice.name, "format": "pcm16"})
    assert answer.choices[0].message.audio.data
    with open_session(server.base_url) as ws:
        receive(ws)
        send(ws, {"type": "session.update", "session": {"audio": {"output": {"voice": {"id": voice.id}}}}})
        assert receive(ws)["type"] == "session.updated"
        send(ws, text_item("Say hello."))
        send(ws, {"type": "response.create", "response": {"max_output_tokens": 12}})
        events = until(ws, "response.done")
        assert len(audio_of(events)) > 0 and events[-1]["response"]["status"] in ("completed", "incomplete")


def test_settings_pocket_tts_cannot_honour_are_400s(client):
    for extra, param in (({"speed": 2.0}, "speed"), ({"extra_body": {"language": "fr"}}, "language")):
        with pytest.raises(openai.BadRequestError) as exc:
            client.audio.speech.create(model=MODEL, voice="alba", input="Hello.", **extra)
        assert exc.value.body["param"] == param


def test_a_pocket_tts_folder_without_voices_fails_the_start(checkpoint, tmp_path):
    import shutil

    from tests.integration.test_omni import start_fails

    broken = tmp_path / "no-voices"
    shutil.copytree(checkpoint, broken, ignore=shutil.ignore_patterns("voices"))
    line = start_fails("--tts-model", str(broken), "--data-dir", str(tmp_path / "data"))
    assert "voices/*.safetensors" in line and str(broken) in line, line
