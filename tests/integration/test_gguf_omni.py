"""GGUF models that hear, through libmtmd: a tiny random-weight Qwen2-Audio built here and converted by
llama.cpp's own converter (`scripts/make_tiny_gguf.py`), served as `--model-path model.gguf --mmproj
mmproj.gguf`, against transformers on the same HF folder. Audio reaches the thinker as the model's own
audio embeddings (no speech to text on the route); the speech-to-text stage still serves transcriptions."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.audio_helpers import librivox_clips
from tests.gguf_helpers import MAX_TOKENS, audio_part, chat, served_pair, spoken_clip, tiny_gguf


@pytest.fixture(scope="module")
def tiny():
    return tiny_gguf("qwen2_audio")


server, http = served_pair()  # module fixtures: a server of `tiny`, and a client of it


class Reference:
    """transformers' Qwen2-Audio on the HF folder the GGUFs were converted from."""

    def __init__(self, folder):
        import torch
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(folder)
        self.model = Qwen2AudioForConditionalGeneration.from_pretrained(folder).eval()
        self.projected = []
        self.model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: self.projected.append(o))

    def answer(self, content, audio: np.ndarray | None = None) -> tuple[int, str]:
        """The prompt's length in tokens, and the greedy answer."""
        conversation = [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        inputs = (self.processor(text=text, audio=[audio], sampling_rate=16000, return_tensors="pt")
                  if audio is not None else self.processor.tokenizer(text, return_tensors="pt"))
        with self.torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        prompt = inputs["input_ids"].shape[1]
        return prompt, self.processor.tokenizer.decode(out[0, prompt:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def reference(tiny) -> Reference:
    return Reference(tiny / "hf")


@pytest.fixture(scope="module")
def clip() -> tuple[np.ndarray, bytes]:
    return spoken_clip()


def test_text_equals_transformers_exactly(http, reference):
    prompt, expected = reference.answer([{"type": "text", "text": "Hello, how are you?"}])
    body = chat(http, [{"type": "text", "text": "Hello, how are you?"}])
    assert body["usage"]["prompt_tokens"] == prompt
    assert body["choices"][0]["message"]["content"] == expected


def test_audio_is_heard_by_the_thinker_as_transformers_hears_it(http, reference, clip, tiny):
    """The same prompt (750 audio embeddings in the wrapping tokens) and the same answer. libmtmd's encoder (its
    own mel, the converter's F16 convolutions) differs from transformers' by the gap measured here: 4e-4 of the
    embeddings' size on this clip. (On a quieter 3 s clip the gap was 10% and the answers parted after two
    words.)"""
    audio, wav = clip
    prompt, expected = reference.answer([{"type": "audio", "audio": audio}], audio)
    body = chat(http, [audio_part(wav)])
    assert body["usage"]["prompt_tokens"] == prompt == 761  # not a transcript's few tokens: the audio itself
    assert body["choices"][0]["message"]["content"] == expected

    from omniserve.executors.mtmd_encoder import MtmdArgs, MtmdEncoderExecutor

    encoder = MtmdEncoderExecutor(MtmdArgs(model_path=str(tiny / "model.gguf"),
                                           mmproj_path=str(tiny / "mmproj.gguf")))
    try:
        assert encoder.load().media == ["audio"]
        ours = next(c.embd for c in encoder.encode_audio(audio) if c.embd is not None)
    finally:
        encoder.close()
    theirs = reference.projected[-1][0, :750].numpy()
    gap = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
    print(f"libmtmd's audio embeddings against transformers': relative gap {gap:.3f}, largest "
          f"{np.abs(ours - theirs).max():.4f} (values up to {np.abs(theirs).max():.3f})")
    assert ours.shape == theirs.shape and gap < 0.01


def test_streamed_audio_answer_equals_the_whole(http, clip):
    _, wav = clip
    whole = chat(http, [audio_part(wav)])["choices"][0]["message"]["content"]
    pieces = []
    with http.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": [audio_part(wav)]}], "max_tokens": MAX_TOKENS,
            "temperature": 0, "stream": True}) as r:
        import json

        for line in r.iter_lines():
            if line.startswith("data: {"):
                pieces += [c["delta"].get("content") or "" for c in json.loads(line[6:])["choices"]]
    assert "".join(pieces) == whole


def test_concurrent_audio_requests_answer_as_they_do_alone(http, clip):
    _, wav = clip
    contents = [[audio_part(wav)], [{"type": "text", "text": "Listen."}, audio_part(wav)],
                [audio_part(wav), {"type": "text", "text": "What was that?"}], [{"type": "text", "text": "Hi!"}]]
    alone = [chat(http, c)["choices"][0]["message"]["content"] for c in contents]
    with ThreadPoolExecutor(len(contents)) as pool:
        together = list(pool.map(lambda c: chat(http, c)["choices"][0]["message"]["content"], contents))
    assert together == alone


def test_an_image_is_a_400_and_transcriptions_still_use_speech_to_text(http, clip):
    pixel = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}}]}]})
    assert r.status_code == 400 and "hears only" in r.json()["error"]["message"]
    wav = open(librivox_clips()[0][0], "rb").read()
    r = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data={"model": "whisper-1"})
    assert r.status_code == 200 and len(r.json()["text"].split()) >= 3


def test_audio_longer_than_the_context_is_a_400_before_it_is_encoded(http, clip):
    """Four minutes of audio are 8 windows of 750 embeddings (and 2 wrapping tokens), more than the 4096-token
    context: the encoder stage counts them from libmtmd's preprocessing and refuses the request before encoding
    any."""
    import io

    import soundfile as sf

    audio, _ = clip
    wav = io.BytesIO()
    sf.write(wav, np.tile(audio, 8), 16000, format="WAV")
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [audio_part(wav.getvalue())]}],
                                                "max_tokens": 4})
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "6002 tokens for 239.9 s" in error["message"] and "context of 4096" in error["message"], error
    assert chat(http, [audio_part(clip[1])])["usage"]["prompt_tokens"] == 761  # the stage goes on


def test_realtime_sends_the_users_audio_to_the_thinker(server, http, clip):
    """Over /v1/realtime the spoken turn reaches the thinker as audio (750 embeddings), as the same chat request
    does, not as a transcript."""
    from omniserve.media.pcm import PCM16, PcmWriter
    from tests.realtime_helpers import open_session, receive, send, until

    audio, _ = clip
    writer = PcmWriter(PCM16, 16000)
    pcm24k = writer.write((audio[:16000 * 8] * 32767).astype("<i2").tobytes()) + writer.flush()
    with open_session(server.base_url) as ws:
        receive(ws)
        send(ws, {"type": "session.update", "session": {"temperature": 0, "max_output_tokens": 4,
                                                        "output_modalities": ["text"]}})
        send(ws, {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
            {"type": "input_audio", "audio": base64.b64encode(pcm24k).decode()}]}})
        send(ws, {"type": "response.create"})
        heard = until(ws, "response.done")[-1]["response"]
    assert heard["status"] in ("completed", "incomplete")
    assert heard["usage"]["input_tokens"] > 750  # the audio's own embeddings, not a transcript's few tokens
