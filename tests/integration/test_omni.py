"""Qwen2.5-Omni and Qwen3-Omni checkpoints served as thinker ⇢ talker ⇢ code2wav stages, on tiny
random-weight checkpoints built here (`scripts/make_tiny_omni.py`). Their answers are noise, so every
test compares the server with transformers' own `generate` on the same inputs and seed: the text
token for token, the audio sample for sample (16-bit)."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

from omniserve.media.pcm import PCM16, PcmWriter
from tests.conftest import MODEL_DATA, ROOT, run_server
from tests.media_helpers import cat_video, data_url, image_part, photo_url, rgb, video_part
from tests.realtime_helpers import audio_of, open_session, receive, send, until

HELLO = [{"role": "user", "content": "Hello, how are you?"}]
SPEAK = {"temperature": 0, "max_tokens": 120}  # the talker greedy: one answer to compare


@pytest.fixture(scope="module")
def tiny_omni():
    out = MODEL_DATA / "tiny-qwen2.5-omni"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_omni.py"), str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def omni_server(tiny_omni, tmp_path_factory):
    with run_server("--model-path", str(tiny_omni), "--embedding-model", "none", "--allow-private-media-urls",
                    tmp_path=tmp_path_factory.mktemp("omni")) as server:
        yield server


class Reference:
    """transformers itself on the same checkpoint, in this process."""

    def __init__(self, folder):
        import torch
        from transformers import Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniProcessor
        from transformers.utils import logging

        logging.set_verbosity_error()
        self.torch = torch
        self.model = Qwen2_5OmniForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
        self.processor = Qwen2_5OmniProcessor.from_pretrained(folder)
        self.codec_stop = [self.model.talker.codec_pad_token, self.model.talker.codec_eos_token]

    def inputs(self, content: list[dict], images=(), audios=(), videos=(), fps=None, audio_in_video=False):
        from omniserve.models.qwen_omni import QWEN_SYSTEM_PROMPT

        conversation = [{"role": "system", "content": [{"type": "text", "text": QWEN_SYSTEM_PROMPT}]},
                        {"role": "user", "content": content}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        kwargs = {}
        if videos:
            kwargs["videos_kwargs"] = {"fps": fps}
            if audio_in_video:
                kwargs.update(use_audio_in_video=True, audio_from_video_indices=[0])
        return self.processor(text=[text], images=list(images) or None, audio=list(audios) or None,
                              videos=list(videos) or None, return_tensors="pt", **kwargs)

    def text(self, inputs, max_tokens: int, audio_in_video=False) -> str:
        sequences = self.model.generate(**inputs, thinker_max_new_tokens=max_tokens, generation_mode="text",
                                        use_audio_in_video=audio_in_video)
        return self.processor.batch_decode(sequences[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]

    def speech(self, inputs, max_tokens: int, seed: int, voice: str = "Chelsie") -> tuple[str, np.ndarray]:
        self.torch.manual_seed(seed)
        sequences, wave = self.model.generate(**inputs, thinker_max_new_tokens=max_tokens, speaker=voice,
                                              talker_do_sample=False, talker_max_new_tokens=SPEAK["max_tokens"],
                                              talker_eos_token_id=self.codec_stop)
        text = self.processor.batch_decode(sequences[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        return text, (wave.clamp(-1, 1) * 32767).round().numpy().astype(np.int16)


@pytest.fixture(scope="module")
def reference(tiny_omni):
    return Reference(tiny_omni)


def text_content(text="Hello, how are you?"):
    return [{"type": "text", "text": text}]


def pcm(answer) -> np.ndarray:
    samples, rate = sf.read(io.BytesIO(base64.b64decode(answer.choices[0].message.audio.data)), dtype="int16")
    assert rate == 24000
    return samples


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def tone(seconds=1.0, hz=440.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


# ---- text ---------------------------------------------------------------------------------------


def test_stages_and_model_info(omni_server):
    with omni_server.http() as http:
        info = http.get("/get_model_info").json()
        models = http.get("/v1/models").json()["data"]
        voices = http.get("/v1/audio/voices").json()["voices"]
    stages = {s["name"]: s for s in info["stages"]}
    assert list(stages) == ["thinker", "talker", "code2wav"]
    assert stages["thinker"]["downstream"] == ["talker"] and stages["talker"]["downstream"] == ["code2wav"]
    for stage in stages.values():
        assert stage["info"]["device"] == "cpu" and stage["info"]["dtype"] == "float32"
        assert stage["info"]["family"] == "qwen2_5_omni"
    assert [m["id"] for m in models] == ["tiny-qwen2.5-omni"]
    assert voices == ["Chelsie", "Ethan"]


def test_greedy_text_equals_transformers(omni_server, reference):
    answer = omni_server.openai().chat.completions.create(model="tiny-qwen2.5-omni", messages=HELLO, max_tokens=24,
                                                          temperature=0)
    expected = reference.text(reference.inputs(text_content()), 24)
    assert answer.choices[0].message.content == expected
    assert answer.usage.completion_tokens == 24


def test_image_and_audio_input_equal_transformers(omni_server, reference):
    sound = tone(1.5)
    content = [image_part(photo_url("chelsea.png")),
               {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(sound)).decode(),
                                                       "format": "wav"}},
               {"type": "text", "text": "What is this?"}]
    answer = omni_server.openai().chat.completions.create(messages=[{"role": "user", "content": content}],
                                                          model="tiny-qwen2.5-omni", max_tokens=16, temperature=0)
    from omniserve.media.audio import decode_audio

    heard = decode_audio(wav_bytes(sound), where="a", max_seconds=60)
    inputs = reference.inputs([{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "What is this?"}],
                              images=[rgb("chelsea.png")], audios=[heard])
    assert answer.choices[0].message.content == reference.text(inputs, 16)
    assert answer.usage.prompt_tokens == inputs["input_ids"].shape[1]


def test_top_level_media_fields_equal_content_parts(omni_server):
    client = omni_server.openai()
    ask = {"model": "tiny-qwen2.5-omni", "max_tokens": 12, "temperature": 0}
    parts = client.chat.completions.create(messages=[{"role": "user", "content": [
        {"type": "text", "text": "Look."}, image_part(photo_url("chelsea.png"))]}], **ask)
    top = client.chat.completions.create(messages=[{"role": "user", "content": "Look."}],
                                         extra_body={"images": [photo_url("chelsea.png")]}, **ask)
    assert top.choices[0].message.content == parts.choices[0].message.content
    assert top.usage.prompt_tokens == parts.usage.prompt_tokens


def test_video_with_its_sound_equals_transformers(omni_server, reference):
    from omniserve.media.video import decode_video

    video = cat_video()
    answer = omni_server.openai().chat.completions.create(
        model="tiny-qwen2.5-omni", max_tokens=12, temperature=0,
        messages=[{"role": "user", "content": [video_part(data_url(video, "video/mp4")),
                                               {"type": "text", "text": "What happens?"}]}])
    clip = decode_video(video, where="v", fps=1.0, max_frames=8, max_seconds=300, max_pixels=25_000_000,
                        with_audio=True, max_audio_seconds=600)
    frames = clip.frames + clip.frames[-1:] if len(clip.frames) % 2 else clip.frames
    fps = (len(clip.timestamps) - 1) / (clip.timestamps[-1] - clip.timestamps[0])
    inputs = reference.inputs([{"type": "video"}, {"type": "text", "text": "What happens?"}],
                              videos=[np.stack(frames)], audios=[clip.audio], fps=fps, audio_in_video=True)
    assert answer.choices[0].message.content == reference.text(inputs, 12, audio_in_video=True)
    assert answer.usage.prompt_tokens == inputs["input_ids"].shape[1]


# ---- speech -------------------------------------------------------------------------------------


def ask_speech(server, seed=3, voice="Ethan", max_tokens=40, **extra):
    return server.openai().chat.completions.create(
        model="tiny-qwen2.5-omni", messages=HELLO, max_tokens=max_tokens, temperature=0, seed=seed,
        modalities=["text", "audio"], audio={"voice": voice, "format": "wav"},
        extra_body={"stage_sampling": {"talker": SPEAK}, **extra})


def test_audio_equals_transformers(omni_server, reference):
    answer = ask_speech(omni_server)
    text, wave = reference.speech(reference.inputs(text_content()), 40, seed=3, voice="Ethan")
    assert answer.choices[0].message.content == text
    assert answer.choices[0].message.audio.transcript == text
    assert answer.usage.prompt_tokens == reference.inputs(text_content())["input_ids"].shape[1]
    samples = pcm(answer)
    assert len(samples) == len(wave) > 24000  # over a second: several chunks joined
    assert np.abs(samples.astype(int) - wave.astype(int)).max() <= 1
    assert np.abs(wave.astype(int)).max() > 1000  # and it is not silence
    other = pcm(ask_speech(omni_server, voice="Chelsie"))
    assert not np.array_equal(other[:len(samples)], samples[:len(other)])  # the voice matters


def test_streamed_audio_joined_equals_whole_and_comes_early(omni_server):
    # a long answer (the tiny thinker writes fast) with a short spoken part: the talker stops after 120 codes
    whole = pcm(ask_speech(omni_server, seed=5, max_tokens=1500, ignore_eos=True))
    stream = omni_server.openai().chat.completions.create(
        model="tiny-qwen2.5-omni", messages=HELLO, max_tokens=1500, temperature=0, seed=5, stream=True,
        modalities=["text", "audio"], audio={"voice": "Ethan", "format": "pcm16"},
        extra_body={"stage_sampling": {"talker": SPEAK}, "ignore_eos": True})
    events, audio = [], bytearray()
    for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        sound = getattr(delta, "audio", None)
        if sound and sound.data:
            audio += base64.b64decode(sound.data)
            events.append(("audio", time.monotonic()))
        if delta.content:
            events.append(("text", time.monotonic()))
    joined = np.frombuffer(bytes(audio), dtype=np.int16)
    assert np.array_equal(joined, whole)
    kinds = [k for k, _ in events]
    assert kinds.count("audio") >= 3  # in chunks, not at once
    first_audio, last_text = kinds.index("audio"), len(kinds) - 1 - kinds[::-1].index("text")
    assert first_audio < last_text, (first_audio, last_text)
    times = dict(events[::-1])
    print(f"first audio after {times['audio'] - events[0][1]:.2f} s, last text after "
          f"{events[last_text][1] - events[0][1]:.2f} s")


def test_concurrent_requests_answer_as_alone(omni_server):
    """Together the stages batch them (one forward pass per step for all): the same text, and the same
    waveform up to the last bit of 16-bit audio, where batched sums round differently."""
    alone = [ask_speech(omni_server, seed=s, max_tokens=20 + 5 * s) for s in range(4)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda s: ask_speech(omni_server, seed=s, max_tokens=20 + 5 * s), range(4)))
    for a, b in zip(alone, together, strict=True):
        assert a.choices[0].message.content == b.choices[0].message.content
        assert len(pcm(a)) == len(pcm(b))
        assert np.abs(pcm(a).astype(int) - pcm(b).astype(int)).max() <= 1
    with omni_server.http() as http:
        metrics = http.get("/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    for stage in ("thinker", "talker"):  # some of their steps decoded several requests at once
        samples = [s for f in text_string_to_metric_families(metrics) if f.name == "omniserve_batch_size"
                   for s in f.samples if s.labels.get("stage") == stage]
        single = next(s.value for s in samples if s.name.endswith("_bucket") and s.labels["le"] == "1.0")
        total = next(s.value for s in samples if s.name.endswith("_count"))
        assert total > single, stage


def test_speech_endpoint_reads_the_text_aloud(omni_server):
    client = omni_server.openai()
    speech = client.audio.speech.create(model="tts-1", voice="Chelsie", input="Hello there.", response_format="wav",
                                        extra_body={"seed": 1})
    samples, rate = sf.read(io.BytesIO(speech.content), dtype="int16")
    assert rate == 24000 and len(samples) > 0
    again = client.audio.speech.create(model="tiny-qwen2.5-omni", voice="Chelsie", input="Hello there.",
                                       response_format="wav", extra_body={"seed": 1})
    assert again.content == speech.content


# ---- bad input ----------------------------------------------------------------------------------


def test_realtime_the_omni_thinker_hears_the_audio_itself_and_answers_aloud(omni_server):
    """Over /v1/realtime an omni checkpoint is asked directly: the user's audio goes to its thinker (no
    speech-to-text stage is served), and its talker and code2wav speak the answer."""
    sound = (tone(1.5) * 32767).astype("<i2")
    writer = PcmWriter(PCM16, 16000)
    pcm24k = writer.write(sound.tobytes()) + writer.flush()
    with open_session(omni_server.base_url) as ws:
        session = receive(ws)["session"]
        assert session["model"] == "tiny-qwen2.5-omni" and session["audio"]["input"]["transcription"] is None
        send(ws, {"type": "session.update", "session": {"instructions": "Be brief.", "temperature": 0,
                                                        "max_output_tokens": 8, "output_modalities": ["text"]}})
        send(ws, {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
            {"type": "input_audio", "audio": base64.b64encode(pcm24k).decode()}]}})
        send(ws, {"type": "response.create"})
        heard = until(ws, "response.done")[-1]["response"]
        send(ws, {"type": "response.create", "response": {"output_modalities": ["audio"],
                                                          "stage_sampling": {"talker": SPEAK}}})
        spoken = until(ws, "response.done")
    assert not [e for e in spoken if e["type"].startswith("conversation.item.input_audio_transcription")]
    # the same conversation as one chat request: as many prompt tokens, so the audio reached the thinker
    chat = omni_server.openai().chat.completions.create(
        model="tiny-qwen2.5-omni", max_tokens=8, temperature=0,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(tone(1.5))).decode(),
                                                    "format": "wav"}}]}])
    assert heard["status"] in ("completed", "incomplete")
    assert heard["usage"]["input_tokens"] == chat.usage.prompt_tokens > 40  # 1.5 s of audio is dozens of tokens
    assert spoken[-1]["response"]["status"] in ("completed", "incomplete") and len(audio_of(spoken)) > 4800


def test_bad_requests_are_400s(omni_server):
    with omni_server.http() as http:
        cases = {
            "unknown voice": {"messages": HELLO, "modalities": ["text", "audio"], "audio": {"voice": "Nobody"}},
            "n > 1": {"messages": HELLO, "n": 2},
            "unreadable image": {"messages": [{"role": "user", "content": [
                image_part("data:image/png;base64," + base64.b64encode(b"not a png").decode())]}]},
            "talker sampling": {"messages": HELLO, "modalities": ["text", "audio"],
                                "stage_sampling": {"talker": {"top_k": -3}}},
        }
        for name, body in cases.items():
            reply = http.post("/v1/chat/completions", json=body)
            assert reply.status_code == 400, (name, reply.text)
            assert reply.json()["error"]["message"], name
            # streamed with audio too: code2wav's first output comes early, but the thinker's check decides
            streamed = http.post("/v1/chat/completions", json={**body, "stream": True, "modalities": ["text", "audio"]})
            assert streamed.status_code == 400, (name, streamed.text)
        long = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hello " * 5000}],
                                                       "stream": True, "modalities": ["text", "audio"]})
        assert long.status_code == 400 and "context" in long.json()["error"]["message"]
        assert http.get("/health").status_code == 200


# ---- flags and start-up -------------------------------------------------------------------------


def test_colocated_stages_share_one_process_and_answer_the_same(omni_server, tiny_omni, tmp_path):
    with run_server("--model-path", str(tiny_omni), "--embedding-model", "none", "--colocate",
                    "--thinker-mem-fraction-static", "0.5", "--mem-fraction-static", "0.3",
                    tmp_path=tmp_path) as server:
        with server.http() as http:
            stages = http.get("/get_model_info").json()["stages"]
        assert len({s["pid"] for s in stages}) == 1 and len(stages) == 3
        assert stages[0]["info"]["mem_fraction"] == 0.5 and stages[1]["info"]["mem_fraction"] == 0.3
        together, apart = ask_speech(server, seed=2), ask_speech(omni_server, seed=2)
        assert together.choices[0].message.content == apart.choices[0].message.content
        assert np.array_equal(pcm(together), pcm(apart))
        # the group's process dies: all three stages are down, then back together in a new process
        import os
        import signal

        from tests.conftest import wait_until

        os.kill(stages[0]["pid"], signal.SIGKILL)
        with server.http() as http:
            wait_until(lambda: http.get("/health").status_code == 503, timeout=10)
            wait_until(lambda: http.get("/health").status_code == 200, timeout=60)
            again = http.get("/get_model_info").json()["stages"]
        assert len({s["pid"] for s in again}) == 1 and again[0]["pid"] != stages[0]["pid"]
        assert pcm(ask_speech(server, seed=2)).tolist() == pcm(together).tolist()


@pytest.mark.parametrize("how", ["--text-only", "a checkpoint without audio output"])
def test_text_only_drops_the_talker_and_code2wav(tiny_omni, tmp_path, how):
    import json
    import shutil

    folder, flags = tiny_omni, ["--text-only"]
    if how != "--text-only":
        folder, flags = tmp_path / "mute", []
        shutil.copytree(tiny_omni, folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "enable_audio_output": False}))
    with run_server("--model-path", str(folder), "--embedding-model", "none", *flags,
                    tmp_path=tmp_path) as server:
        with server.http() as http:
            assert [s["name"] for s in http.get("/get_model_info").json()["stages"]] == ["thinker"]
            reply = http.post("/v1/chat/completions", json={"messages": HELLO, "modalities": ["text", "audio"]})
            assert reply.status_code == 400 and reply.json()["error"]["param"] == "modalities"
            assert http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4}).status_code == 200


def test_a_hub_id_in_the_local_cache_serves_offline(tiny_omni, tmp_path):
    import shutil

    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny-org--tiny-omni" / "snapshots" / "0123abc"
    shutil.copytree(tiny_omni, snapshot)
    (cache / "models--tiny-org--tiny-omni" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-omni" / "refs" / "main").write_text("0123abc")
    with run_server("--model-path", "tiny-org/tiny-omni", "--embedding-model", "none", "--text-only",
                    tmp_path=tmp_path, env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}) as server:
        client = server.openai()
        assert [m.id for m in client.models.list()] == ["tiny-org/tiny-omni"]
        answer = client.chat.completions.create(model="tiny-org/tiny-omni", messages=HELLO, max_tokens=4)
        assert answer.usage.completion_tokens == 4


def start_fails(*args: str, env: dict | None = None) -> str:
    """The last line of a server start that must fail (other stages may have printed progress)."""
    import os

    done = subprocess.run([sys.executable, "-m", "omniserve", "serve", "--embedding-model", "none", *args],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("OMNISERVE_")} | (env or {}))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


def test_bad_flags_and_checkpoints_fail_at_start(tiny_omni, tmp_path):
    import json
    import shutil

    path = str(tiny_omni)
    assert "--gpu-talker 1: no such CUDA device" in start_fails("--model-path", path, "--gpu-talker", "1",
                                                               env={"CUDA_VISIBLE_DEVICES": "0"})
    assert "--thinker-mem-fraction-static" in start_fails("--model-path", path, "--thinker-mem-fraction-static", "1")
    assert "--dtype" in start_fails("--model-path", path, "--dtype", "float8")
    config = tmp_path / "bad-device.yaml"
    config.write_text("stages: {code2wav: {placement: {device: cuda:7}}}\n")
    line = start_fails("--model-path", path, "--config", str(config))
    assert "code2wav" in line and "cuda:7" in line and "does not exist" in line
    config.write_text("stages: {talker: {args: {device: cuda:3}}}\n")  # the stage's own args say it too
    line = start_fails("--model-path", path, "--config", str(config))
    assert "talker" in line and "cuda:3" in line and "does not exist" in line
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert "unsupported architecture ['LlamaForCausalLM']" in start_fails("--model-path", str(other))
    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_omni, broken, ignore=shutil.ignore_patterns("*.safetensors"))
    assert "weight file model.safetensors is missing" in start_fails("--model-path", str(broken))
    fp8 = tmp_path / "fp8"
    shutil.copytree(tiny_omni, fp8)
    data = json.loads((fp8 / "config.json").read_text())
    (fp8 / "config.json").write_text(json.dumps({**data, "quantization_config": {"quant_method": "fp8"}}))
    assert "FP8" in start_fails("--model-path", str(fp8), "--text-only")
    line = start_fails("--model-path", "Qwen/Qwen2.5-Omni-7B", env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert "not in the local Hugging Face cache" in line and "does not download" in line


# ---- Qwen3-Omni: thinker ⇢ talker (+ code predictor) ⇢ code2wav -----------------------------------


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory):
    out = MODEL_DATA / "tiny-qwen3-omni"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_omni.py"), str(out), "--family",
                           "qwen3_omni_moe"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with run_server("--model-path", str(out), "--embedding-model", "none", "--allow-private-media-urls",
                    tmp_path=tmp_path_factory.mktemp("qwen3")) as server:
        yield out, server


class Qwen3Reference:
    """transformers' Qwen3OmniMoeForConditionalGeneration on the same checkpoint, in this process. Its
    waveform is decoded with code2wav's own `chunked_decode` at the chunking the server streams with
    (25 frames, 25 of left context) instead of the 300 its generate uses for a whole answer at once."""

    def __init__(self, folder):
        import torch
        from transformers import Qwen3OmniMoeForConditionalGeneration, Qwen3OmniMoeProcessor
        from transformers.utils import logging

        logging.set_verbosity_error()
        self.torch = torch
        self.model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
        # transformers' talker lays out audio positions with the audio encoder's window, which only the
        # thinker's config holds: without it, its own generate fails on audio input (the server does the same)
        self.model.talker.config.audio_config = self.model.config.thinker_config.audio_config
        whole = self.model.code2wav.chunked_decode
        self.model.code2wav.chunked_decode = lambda codes, chunk_size, left_context_size: whole(codes, 25, 25)
        self.processor = Qwen3OmniMoeProcessor.from_pretrained(folder)
        self.eos = self.model.config.thinker_config.text_config.eos_token_id

    def inputs(self, content: list[dict], **media):
        text = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                                  tokenize=False)
        return self.processor(text=[text], return_tensors="pt", **media)

    def answer(self, inputs, max_tokens: int, seed: int | None = None, voice: str = "Ethan", **extra):
        """(text, 16-bit waveform or None): the thinker greedy; with a seed, the talker samples with its
        defaults from that seed."""
        if seed is None:
            result = self.model.generate(**inputs, thinker_max_new_tokens=max_tokens, return_audio=False,
                                         thinker_eos_token_id=self.eos, **extra)
            sequences, wave = getattr(result, "sequences", result), None
        else:
            self.torch.manual_seed(seed)
            sequences, wave = self.model.generate(**inputs, thinker_max_new_tokens=max_tokens, speaker=voice,
                                                  thinker_eos_token_id=self.eos, **extra)
            wave = (wave.reshape(-1).clamp(-1, 1) * 32767).round().numpy().astype(np.int16)
        text = self.processor.batch_decode(sequences[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        return text, wave


@pytest.fixture(scope="module")
def qwen3_reference(tiny_qwen3):
    return Qwen3Reference(tiny_qwen3[0])


def qwen3_cases():
    """(content for transformers, its media, the same content as sent to the server)."""
    from omniserve.media.audio import decode_audio

    sound = wav_bytes(tone(1.0))
    return [
        ([{"type": "text", "text": "Hello, how are you?"}], {}, "Hello, how are you?"),
        ([{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "What is this?"}],
         {"images": [rgb("chelsea.png")], "audio": [decode_audio(sound, where="a", max_seconds=60)]},
         [image_part(photo_url("chelsea.png")),
          {"type": "input_audio", "input_audio": {"data": base64.b64encode(sound).decode(), "format": "wav"}},
          {"type": "text", "text": "What is this?"}]),
    ]


def ask_qwen3(server, content, seed=2, voice="Ethan", max_tokens=20, stream=False, **extra):
    return server.openai().chat.completions.create(
        model="tiny-qwen3-omni", messages=[{"role": "user", "content": content}], max_tokens=max_tokens,
        temperature=0, seed=seed, modalities=["text", "audio"], stream=stream,
        audio={"voice": voice, "format": "pcm16" if stream else "wav"}, extra_body=extra)


def test_qwen3_text_equals_transformers(tiny_qwen3, qwen3_reference):
    _, server = tiny_qwen3
    for content, media, sent in qwen3_cases():
        inputs = qwen3_reference.inputs(content, **media)
        expected, _ = qwen3_reference.answer(inputs, 12)
        answer = server.openai().chat.completions.create(model="tiny-qwen3-omni", max_tokens=12, temperature=0,
                                                         messages=[{"role": "user", "content": sent}])
        assert answer.choices[0].message.content == expected
        assert answer.usage.prompt_tokens == inputs["input_ids"].shape[1]


def test_qwen3_audio_equals_transformers(tiny_qwen3, qwen3_reference):
    """The talker samples (its defaults, from the request's seed) and its code predictor draws from the
    same stream; the text, every codec frame and so the waveform are transformers' own."""
    _, server = tiny_qwen3
    for (content, media, sent), seed in zip(qwen3_cases(), (2, 7), strict=True):
        text, wave = qwen3_reference.answer(qwen3_reference.inputs(content, **media), 20, seed=seed)
        answer = ask_qwen3(server, sent, seed=seed)
        assert answer.choices[0].message.content == text
        assert answer.choices[0].message.audio.transcript == text
        samples = pcm(answer)
        assert len(samples) == len(wave) > 2 * 25 * 480  # over two chunks of 25 frames (480 samples each)
        assert np.abs(samples.astype(int) - wave.astype(int)).max() <= 1
        assert np.abs(wave.astype(int)).max() > 1000  # and it is not silence
    other = pcm(ask_qwen3(server, "Hello, how are you?", seed=2, voice="Chelsie"))
    assert not np.array_equal(other[:len(samples)], samples[:len(other)])  # the voice matters


def test_qwen3_video_with_its_sound_spoken_equals_transformers(tiny_qwen3, qwen3_reference):
    """A video heard and seen (use_audio_in_video): the thinker's positions interleave its frames and sound,
    and so do the talker's."""
    from omniserve.media.video import decode_video

    _, server = tiny_qwen3
    video = cat_video()
    clip = decode_video(video, where="v", fps=1.0, max_frames=8, max_seconds=300, max_pixels=25_000_000,
                        with_audio=True, max_audio_seconds=600)
    frames = clip.frames + clip.frames[-1:] if len(clip.frames) % 2 else clip.frames
    fps = (len(clip.timestamps) - 1) / (clip.timestamps[-1] - clip.timestamps[0])
    inputs = qwen3_reference.inputs([{"type": "video"}, {"type": "text", "text": "What happens?"}],
                                    videos=[np.stack(frames)], audio=[clip.audio], videos_kwargs={"fps": fps},
                                    use_audio_in_video=True, audio_from_video_indices=[0])
    text, wave = qwen3_reference.answer(inputs, 12, seed=8, use_audio_in_video=True)
    answer = ask_qwen3(server, [video_part(data_url(video, "video/mp4")), {"type": "text", "text": "What happens?"}],
                       seed=8, max_tokens=12)
    assert answer.choices[0].message.content == text
    assert answer.usage.prompt_tokens == inputs["input_ids"].shape[1]
    samples = pcm(answer)
    assert len(samples) == len(wave) > 0
    assert np.abs(samples.astype(int) - wave.astype(int)).max() <= 1


def test_qwen3_streams_chunks_and_batches_requests(tiny_qwen3):
    """Streamed, the audio comes in chunks as the talker makes frames, joined it is the whole answer's;
    requests together are answered as alone (the talker, its code predictor and code2wav batch them)."""
    _, server = tiny_qwen3
    talker = {"stage_sampling": {"talker": {"max_tokens": 80, "ignore_eos": True}}}
    whole = pcm(ask_qwen3(server, "Hello", seed=4, **talker))
    assert len(whole) > 3 * 25 * 480  # over three chunks
    audio, kinds = bytearray(), []
    for chunk in ask_qwen3(server, "Hello", seed=4, stream=True, **talker):
        delta = chunk.choices[0].delta if chunk.choices else None
        sound = getattr(delta, "audio", None) if delta else None
        if sound and sound.data:
            audio += base64.b64decode(sound.data)
            kinds.append("audio")
    assert kinds.count("audio") >= 4
    assert np.array_equal(np.frombuffer(bytes(audio), dtype=np.int16), whole)

    alone = [ask_qwen3(server, "Hello", seed=s, max_tokens=10 + 4 * s) for s in range(4)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda s: ask_qwen3(server, "Hello", seed=s, max_tokens=10 + 4 * s), range(4)))
    for a, b in zip(alone, together, strict=True):
        assert a.choices[0].message.content == b.choices[0].message.content
        assert len(pcm(a)) == len(pcm(b))
        assert np.abs(pcm(a).astype(int) - pcm(b).astype(int)).max() <= 1


def test_qwen3_voices_speech_and_bad_requests(tiny_qwen3):
    _, server = tiny_qwen3
    with server.http() as http:
        stages = http.get("/get_model_info").json()["stages"]
        assert [s["name"] for s in stages] == ["thinker", "talker", "code2wav"]
        assert all(s["info"]["family"] == "qwen3_omni_moe" for s in stages)
        assert sorted(http.get("/v1/audio/voices").json()["voices"]) == ["Chelsie", "Ethan"]
        bad = http.post("/v1/chat/completions", json={"messages": HELLO, "modalities": ["text", "audio"],
                                                      "audio": {"voice": "Nobody", "format": "wav"}})
        assert bad.status_code == 400 and "Ethan" in bad.json()["error"]["message"]
    speech = server.openai().audio.speech.create(model="tts-1", voice="chelsie", input="Hello there.",
                                                 response_format="wav", extra_body={"seed": 1})
    samples, rate = sf.read(io.BytesIO(speech.content), dtype="int16")
    assert rate == 24000 and len(samples) > 0
