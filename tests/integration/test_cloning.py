"""Voice cloning with Pocket TTS, on a tiny random-weight checkpoint built here (`scripts/make_tiny_tts.py`):
the served audio equals transformers' own `generate` for the same seed, with a built-in voice and with a
custom voice of the voice library; two samples give two voices; streamed chunks join to the whole answer;
concurrent requests (batched in one step) answer as they do alone; chat and realtime speak custom voices.
The speech itself is noise: the weights are random.

The same weights also run as GGUF through llama.cpp (`scripts/make_tiny_gguf.py --family pocket_tts`), served
twice: as built (sampling, temperature 0.7) and greedy (a generation_config.json with `do_sample: false`). The
greedy one's speech equals transformers' greedy `generate` up to llama.cpp's numerics (F16 convolutions in the
codec, which also clamps before the fade-in); the sampled one repeats its audio for a seed.

A tiny Qwen3-TTS "Base" GGUF (`make_tiny_gguf.py --family qwen3_tts`; transformers has no Qwen3-TTS classes, so
there is no reference to equal): its speech repeats for a seed and changes with it and with the voice, streams in
chunks that join into the whole across the codec's 72-frame windows, answers concurrent requests as it answers
them alone, speaks custom voices, and refuses a language it does not speak."""

from __future__ import annotations

import io
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile as sf

from tests.conftest import MODEL_DATA, ROOT, run_server
from tests.gguf_helpers import tiny_gguf
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


GGUF = "tiny-pocket-tts-gguf"  # sampling
GREEDY = "tiny-pocket-tts-gguf-greedy"
QWEN3 = "tiny-qwen3-tts-gguf"  # sampling
QWEN3_GREEDY = "tiny-qwen3-tts-gguf-greedy"


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> dict[str, Path]:
    """The GGUF folder as built, and a greedy one beside it (the same files, and a generation config)."""
    built = tiny_gguf("pocket_tts")
    greedy = tmp_path_factory.mktemp("gguf") / GREEDY
    greedy.mkdir()
    for name in ("model.gguf", "mmproj.gguf", "voices"):
        (greedy / name).symlink_to(built / name)
    (greedy / "generation_config.json").write_text('{"do_sample": false, "min_frames_before_eos": 6}')
    qwen3 = tiny_gguf("qwen3_tts")
    qwen3_greedy = greedy.parent / QWEN3_GREEDY
    qwen3_greedy.mkdir()
    for name in ("model.gguf", "mmproj.gguf", "voices"):
        (qwen3_greedy / name).symlink_to(qwen3 / name)
    (qwen3_greedy / "generation_config.json").write_text(
        '{"do_sample": false, "subtalker_dosample": false, "max_new_tokens": 100}')
    return {GGUF: built, GREEDY: greedy, QWEN3: qwen3, QWEN3_GREEDY: qwen3_greedy}


@pytest.fixture(scope="module")
def server(checkpoint, gguf, folder, tmp_path_factory):
    # Kokoro makes the consent recordings and samples; Pocket TTS speaks the custom voices
    with run_server("--data-dir", str(folder), "--tts-model", str(checkpoint), "kokoro-82m", *map(str, gguf.values()),
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

    def speak(self, sentences: list[str], seed: int, voice=None, sample=None, greedy: bool = False) -> np.ndarray:
        """`voice`: a built-in voice's latents; `sample`: a 24 kHz clip, given to the processor as audio.
        `greedy`: no noise, and the codec's audio clamped before the fade-in, as llama.cpp's codec clamps."""
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
                out = self.model.generate(**inputs, **({"do_sample": False} if greedy else {}))
                if greedy:
                    wave = self.processor.audio_tokenizer.decode(out.audio_latents).audio_values[0, 0].clamp(-1, 1)
                    fade = self.torch.linspace(0, 1, int(self.processor.fade_in_duration * 24000))
                    wave[:len(fade)] *= fade
                    parts.append(wave.numpy())
                    continue
            parts.append(self.processor.decode(out.audio_latents, out.audio_latents_mask)[0].numpy())
        return (np.clip(np.concatenate(parts), -1, 1) * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def reference(checkpoint) -> Reference:
    return Reference(checkpoint)


def pcm(client, voice, seed: int, text: str = TEXT, model: str | None = MODEL, **extra_body) -> np.ndarray:
    extra = {"model": model} if model else {"model": "tts-1-hd"}
    data = client.audio.speech.create(**extra, voice=voice, input=text, response_format="pcm",
                                      extra_body={"seed": seed, **extra_body}).content
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
        assert len(kept) == 2, sorted(p.name for p in library.iterdir())  # transformers' codec's, and the GGUF's
    for model in ("pocket-tts-gguf", "qwen3-tts-gguf"):
        assert all(len(list(library.glob(f"{voice.id}.{model}-*.prepared"))) == 1 for voice, _ in voices.values())
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


def assert_streamed_chunks_join(server, client, model: str) -> None:
    """Speech streamed as server-sent events: its audio deltas join into the whole answer."""
    import base64
    import json

    whole = pcm(client, "marius", seed=3, model=model)
    deltas = []
    with server.http() as http, http.stream("POST", "/v1/audio/speech", json={
            "model": model, "voice": "marius", "input": TEXT, "response_format": "pcm", "stream_format": "sse",
            "seed": 3}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and '"speech.audio.delta"' in line:
                deltas.append(base64.b64decode(json.loads(line[6:])["audio"]))
    assert len(deltas) >= 4  # two sentences, each in a first short chunk and the rest
    assert np.array_equal(np.frombuffer(b"".join(deltas), np.int16), whole)


def test_streamed_chunks_join_to_the_whole_answer(server, client):
    assert_streamed_chunks_join(server, client, MODEL)


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


# ---- Pocket TTS as GGUF (llama.cpp) -------------------------------------------------------------------------


def assert_near(served: np.ndarray, expected: np.ndarray) -> None:
    """The same frames (so the same length), and audio within llama.cpp's numerics: F16 convolutions in the codec
    (measured: 126 of 32767 at most, 1.1e-3 relative in L2)."""
    assert len(served) == len(expected) and len(served) > 0, (len(served), len(expected))
    gap = np.abs(served.astype(int) - expected.astype(int))
    assert gap.max() <= 300 and np.linalg.norm(gap) <= 3e-3 * np.linalg.norm(expected.astype(float)), gap.max()


def test_gguf_greedy_speech_equals_transformers_greedy_generate(client, reference, checkpoint):
    from safetensors.torch import load_file

    alba = load_file(checkpoint / "voices" / "alba.safetensors")["audio_prompt_latents"]
    served = pcm(client, "alba", seed=1, model=GREEDY)
    assert_near(served, reference.speak(SENTENCES, 0, voice=alba, greedy=True))
    assert np.array_equal(pcm(client, "alba", seed=2, model=GREEDY), served)  # no noise: the seed changes nothing
    marius = load_file(checkpoint / "voices" / "marius.safetensors")["audio_prompt_latents"]
    assert_near(pcm(client, "marius", seed=1, model=GREEDY), reference.speak(SENTENCES, 0, voice=marius, greedy=True))


def test_gguf_speaks_a_custom_voice_as_transformers_does_from_its_sample(client, reference, voices):
    """libmtmd's codec encoder reads the sample (ended on a pause, as transformers' processor ends it)."""
    voice, sample = voices["bf_emma"]
    served = pcm(client, {"id": voice.id}, seed=1, model=GREEDY)
    assert_near(served, reference.speak(SENTENCES, 0, sample=sample, greedy=True))
    other = pcm(client, {"id": voices["am_michael"][0].id}, seed=1, model=GREEDY)
    assert len(other) != len(served) or not np.array_equal(other, served)


def test_gguf_voice_rows_equal_transformers_codec_and_projection(gguf, reference, voices):
    """What the backbone reads of a voice: a custom voice's sample through libmtmd's codec encoder, and a built-in
    voice's latents through the speaker projection, against transformers' codec and `audio_prompt_proj`."""
    import torch
    from safetensors.torch import load_file

    from omniserve.executors.pocket_tts_gguf import PocketTtsGgufArgs, PocketTtsGgufExecutor

    folder = gguf[GREEDY]
    executor = PocketTtsGgufExecutor(PocketTtsGgufArgs(model_path=str(folder / "model.gguf"),
                                                       mmproj_path=str(folder / "mmproj.gguf"),
                                                       voices_path=str(folder / "voices"), max_batch=2))
    executor.load()
    try:
        processor, model = reference.processor, reference.model
        _, sample = voices["bf_emma"]
        features = processor.feature_extractor(sample, sampling_rate=24000, end_on_pause=True, return_tensors="pt")
        with torch.no_grad():
            encoded = processor.audio_tokenizer.encode(features["input_values"], features["padding_mask"])
            expected = model.model.audio_prompt_proj(encoded.latents[0][encoded.latents_mask[0].bool()]).numpy()
        rows = executor.encode_voice(sample)
        assert rows.shape == expected.shape  # the sample ends on the same pause
        assert np.abs(rows - expected).max() <= 5e-3 * np.abs(expected).max()  # F16 convolutions
        alba = load_file(folder / "voices" / "alba.safetensors")["audio_prompt_latents"]
        with torch.no_grad():
            expected = model.model.audio_prompt_proj(alba).numpy()
        assert np.allclose(executor._voices["alba"], expected, atol=1e-5)
    finally:
        executor.close()


def test_gguf_sampling_repeats_for_a_seed_and_changes_with_it_and_the_voice(client):
    served = pcm(client, "alba", seed=7, model=GGUF)
    assert np.array_equal(pcm(client, "alba", seed=7, model=GGUF), served)
    assert not np.array_equal(pcm(client, "alba", seed=8, model=GGUF)[:len(served)], served)
    assert not np.array_equal(pcm(client, "marius", seed=7, model=GGUF)[:len(served)], served)
    assert not np.array_equal(pcm(client, "alba", seed=7, model=GREEDY)[:len(served)], served)


def test_gguf_streamed_chunks_join_and_concurrent_requests_answer_as_alone(server, client, voices):
    assert_streamed_chunks_join(server, client, GGUF)
    jobs = [("alba", 1, TEXT), ("marius", 2, "One two three four five six seven eight nine ten eleven."),
            ({"id": voices["bf_emma"][0].id}, 3, "Short one."), ("alba", 4, "A fourth answer, a little longer.")]
    alone = [pcm(client, voice, seed, text, model=GGUF) for voice, seed, text in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: pcm(client, job[0], job[1], job[2], model=GGUF), jobs))
    for a, b in zip(alone, together, strict=True):  # one decode for the batch, not one per row: float noise
        assert_near(b, a)


def test_gguf_settings_it_cannot_honour_are_400s(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.audio.speech.create(model=GGUF, voice="nobody", input="Hello.")
    assert exc.value.body["param"] == "voice" and "alba, marius" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.audio.speech.create(model=GGUF, voice="alba", input="Hello.", speed=2.0)
    assert exc.value.body["param"] == "speed"


def test_a_gguf_folder_that_is_not_pocket_tts_fails_the_start(gguf, tmp_path):
    from tests.integration.test_omni import start_fails

    other = tiny_gguf("qwen2_audio")
    wrong = tmp_path / "wrong-projector"
    wrong.mkdir()
    (wrong / "model.gguf").symlink_to(gguf[GGUF] / "model.gguf")
    (wrong / "mmproj.gguf").symlink_to(other / "mmproj.gguf")
    (wrong / "voices").symlink_to(gguf[GGUF] / "voices")
    line = start_fails("--tts-model", str(wrong), "--data-dir", str(tmp_path / "data"))
    assert "mmproj.gguf" in line and ("Pocket TTS" in line or "libmtmd" in line), line
    (wrong / "extra.gguf").symlink_to(other / "model.gguf")
    line = start_fails("--tts-model", str(wrong), "--data-dir", str(tmp_path / "data"))
    assert "two .gguf files" in line, line


# ---- Qwen3-TTS as GGUF (llama.cpp) -------------------------------------------------------------------------


def test_qwen3_tts_repeats_for_a_seed_and_changes_with_it_and_the_voice(server, client):
    models = {m["id"]: m for m in server.http().get("/v1/models").json()["data"]}
    assert models[QWEN3]["type"] == "tts"
    served = pcm(client, "alba", seed=7, text="Hello there.", model=QWEN3)
    assert len(served) % 1920 == 0 and 2 * 1920 <= len(served) <= 100 * 1920  # whole 80 ms frames, within the cap
    assert np.abs(served.astype(int)).max() > 1000  # heard, not silence
    assert np.array_equal(pcm(client, "alba", seed=7, text="Hello there.", model=QWEN3), served)
    assert not np.array_equal(pcm(client, "alba", seed=8, text="Hello there.", model=QWEN3)[:len(served)],
                              served[:len(served)])
    other = pcm(client, "marius", seed=7, text="Hello there.", model=QWEN3)
    assert len(other) != len(served) or not np.array_equal(other, served)


def test_qwen3_tts_streams_chunks_that_join_across_windows_and_batches_as_alone(server, client, voices):
    """TEXT's second sentence runs to the 100-frame cap: one whole 72-frame window of the codec, then a part.
    Requests speaking at once share one talker step: greedy, they answer as they do alone (sampled, the talker's
    logits in a batch differ from alone by float noise, 2e-6, which can flip a sampled code, and the rest
    follows)."""
    assert_streamed_chunks_join(server, client, QWEN3)
    jobs = [("alba", 1, TEXT), ("marius", 2, "One two three."), ({"id": voices["bf_emma"][0].id}, 3, "Short one."),
            ("alba", 4, "A fourth answer.")]
    alone = [pcm(client, voice, seed, text, model=QWEN3_GREEDY) for voice, seed, text in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(lambda job: pcm(client, job[0], job[1], job[2], model=QWEN3_GREEDY), jobs))
    for a, b in zip(alone, together, strict=True):
        assert np.array_equal(a, b)


def test_qwen3_tts_speaks_custom_voices_and_its_languages(client, voices, folder):
    """A custom voice is its sample's speaker embedding (kept in the voice library). The two speakers' embeddings
    differ by about 5% of their size: too little to move a random talker's sampled codes, so the audio is compared
    with a built-in voice's instead."""
    from safetensors.numpy import load_file

    kept = [load_file(next((folder / "voices").glob(f"{voices[name][0].id}.qwen3-tts-gguf-*.prepared")))
            ["speaker_embedding"] for name in ("am_michael", "bf_emma")]
    assert kept[0].shape == kept[1].shape == (1, 64) and not np.allclose(kept[0], kept[1], atol=1e-3)
    michael = pcm(client, {"id": voices["am_michael"][0].id}, seed=5, text="Hello.", model=QWEN3)
    alba = pcm(client, "alba", seed=5, text="Hello.", model=QWEN3)
    assert len(michael) and (len(michael) != len(alba) or not np.array_equal(michael, alba))
    assert len(pcm(client, "alba", seed=5, text="Bonjour.", model=QWEN3, language="fr"))
    with pytest.raises(openai.BadRequestError) as exc:
        pcm(client, "alba", seed=5, text="Hello.", model=QWEN3, language="tlh")
    assert exc.value.body["param"] == "language" and "english" in exc.value.body["message"]


def test_qwen3_tts_chunks_equal_the_codec_decoding_the_sentence_whole(gguf):
    """The executor in this process: a sentence's streamed chunks (4, 8, 16, 32 frames, then the rest; a chunk
    inside a 72-frame window decoded from the last whole window's state) equal the codec decoding its frames in
    whole windows, as llama.cpp's own helper does."""
    from omniserve.executors.qwen3_tts_gguf import WINDOW, Qwen3TtsGgufArgs, Qwen3TtsGgufExecutor
    from omniserve.runtime.types import OmniRequest

    folder = gguf[QWEN3]
    executor = Qwen3TtsGgufExecutor(Qwen3TtsGgufArgs(
        model_path=str(folder / "model.gguf"), mmproj_path=str(folder / "mmproj.gguf"),
        voices_path=str(folder / "voices"), max_batch=2, max_new_tokens=100))
    executor.load()
    try:
        frames = []
        decode = executor._decode
        executor._decode = lambda u: (frames.__setitem__(slice(None), list(u.frames)), decode(u))[1]
        outputs = executor.add(OmniRequest(request_id="r", entry="talker", prompt="Hello there.",
                                           params={"talker": {"seed": 3}}))
        while executor.has_work():
            outputs += executor.step().outputs
        chunks = [o.audio for o in outputs if o.audio]
        assert len(frames) == 100 and len(chunks) == 5  # the cap: 4 + 8 + 16 + 32 + 40 frames, across the window
        whole, state = [], None
        for start in range(0, len(frames), WINDOW):
            audio, state = executor.gen.audio(state, codes=np.stack(frames[start:start + WINDOW]))
            whole.append(audio)
        expected = (np.clip(np.concatenate(whole), -1, 1) * 32767).astype(np.int16)
        assert np.array_equal(np.frombuffer(b"".join(chunks), np.int16), expected)
    finally:
        executor.close()
