"""GGUF models that place media with M-RoPE, through libmtmd: Qwen2.5-Omni's and Qwen3-Omni's thinkers (a mixture
of experts, interleaved M-RoPE), which hear and see, and Qwen2.5-VL and Qwen3-VL (interleaved M-RoPE, DeepStack),
which see: tiny random-weight checkpoints built here and
converted by llama.cpp's own converter (`scripts/make_tiny_gguf.py --family F`), served as `--model-path model.gguf
--mmproj mmproj.gguf`, against transformers on the same HF folder.

Its positions are M-RoPE: an image's embeddings sit on their grid (time, row, column) and take max(rows, columns)
positions, audio takes one per embedding, and text after either continues from there, as transformers'
`get_rope_index` places them."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest

from tests.gguf_helpers import MAX_TOKENS, audio_part, chat, served_pair, spoken_clip, tiny_gguf

# 6 x 8 patches (14 pixels in Qwen2.5's, 16 in Qwen3's), a 3 x 4 grid of 12 embeddings after merging, not a
# square (so rows and columns differ), and within both sides' pixel limits, so neither resizes it (libmtmd takes 8
# merged patches at least)
IMAGE_SHAPES = {"qwen2_5_omni": (84, 112, 3), "qwen2_5_vl": (84, 112, 3), "qwen3_vl": (96, 128, 3),
                "qwen3_omni_moe": (96, 128, 3)}


@pytest.fixture(scope="module", params=list(IMAGE_SHAPES))
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def tiny(family):
    return tiny_gguf(family)


server, http = served_pair()  # module fixtures: a server of `tiny`, and a client of it


# greedy picks closer than this may go either way between the two implementations (llama.cpp's KV cache is F16:
# logits differ by up to 1e-3); a random-weight model's flat distributions have such near-ties now and then
TIE = 2e-3


@dataclass
class Answer:
    prompt: int  # tokens
    text: str
    logprobs: list[float]
    decided_text: str = ""  # the answer's text up to its first near-tie
    decided: int = 0  # its tokens up to there (all of them: no near-tie)


class Reference:
    """transformers on the HF folder the GGUFs were converted from: Qwen2.5-Omni's thinker, or the VL model."""

    def __init__(self, folder, family: str):
        import torch
        import transformers
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(folder)
        omni = {"qwen2_5_omni": "Qwen2_5OmniForConditionalGeneration",
                "qwen3_omni_moe": "Qwen3OmniMoeForConditionalGeneration"}
        if family in omni:
            self.thinker = getattr(transformers, omni[family]).from_pretrained(folder).thinker.eval()
        else:
            self.thinker = AutoModelForImageTextToText.from_pretrained(folder).eval()
        self.seen = []
        self.thinker.model.visual.register_forward_hook(lambda m, i, o: self.seen.append(self.torch.cat(
            [o.pooler_output, *(getattr(o, "deepstack_features", None) or [])], -1)))  # Qwen3-VL's DeepStack too

    def answer(self, content, **media) -> Answer:
        """The prompt's length in tokens, the greedy answer, its tokens' log-probabilities, and how many of its
        first tokens won by a clear margin."""
        text = self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=text, return_tensors="pt", **{k: [v] for k, v in media.items()})
        with self.torch.no_grad():
            out = self.thinker.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False, output_scores=True,
                                        return_dict_in_generate=True)
        prompt = inputs["input_ids"].shape[1]
        tokens = out.sequences[0, prompt:]
        steps = [self.torch.log_softmax(s[0], -1) for s in out.scores]
        top2 = [step.topk(2).values for step in steps]
        decided = next((i for i, (a, b) in enumerate(top2) if a - b < TIE), len(top2))
        decode = self.processor.tokenizer.decode
        return Answer(prompt, decode(tokens, skip_special_tokens=True),
                      [float(step[t]) for step, t in zip(steps, tokens, strict=False)],
                      decode(tokens[:decided], skip_special_tokens=True), decided)


@pytest.fixture(scope="module")
def reference(tiny, family) -> Reference:
    return Reference(tiny / "hf", family)


@pytest.fixture(scope="module")
def clip():
    return spoken_clip()


@pytest.fixture(scope="module")
def image(family):
    """Noise, as an array and as an `image_url` part."""
    from PIL import Image

    pixels = (np.random.default_rng(0).random(IMAGE_SHAPES[family]) * 255).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    return pixels, {"type": "image_url",
                    "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}}


def served(http, content) -> Answer:
    body = chat(http, content, logprobs=True)
    logprobs = [t["logprob"] for t in body["choices"][0]["logprobs"]["content"]]
    return Answer(body["usage"]["prompt_tokens"], body["choices"][0]["message"]["content"], logprobs)


def assert_same(ours: Answer, theirs: Answer, tolerance: float):
    """The same prompt length and the same answer, or the same up to the reference's first near-tie (at least
    three tokens in); the answer's log-probabilities within `tolerance` (the encoders' numerical gap reaches
    them)."""
    assert ours.prompt == theirs.prompt
    n = len(theirs.logprobs)
    if ours.text != theirs.text:  # only a near-tie may part them, after three tokens at least
        assert theirs.decided >= 3 and ours.text.startswith(theirs.decided_text), (ours.text, theirs.decided_text)
        n = theirs.decided + 1  # the near-tie itself still agrees in value, whichever side each picked
    assert np.allclose(ours.logprobs[:n], theirs.logprobs[:n], atol=tolerance), (ours.logprobs, theirs.logprobs)


def test_models_list_the_projector(http):
    cards = {m["id"]: m["type"] for m in http.get("/v1/models").json()["data"]}
    assert cards["mmproj"] == "vision" and cards["model"] == "chat"


def test_text_equals_transformers_exactly(http, reference):
    content = [{"type": "text", "text": "Hello, how are you?"}]
    assert_same(served(http, content), reference.answer(content), 1e-2)


def test_an_image_sits_on_its_grid_as_transformers_places_it(http, reference, image, tiny):
    """12 embeddings on a 3 x 4 grid, in the family's wrapping tokens, then the question at the position after
    the grid's widest side. The encoders differ by the gap measured here. (Qwen2.5-Omni wraps images in
    `<|vision_bos|>`...`<|vision_eos|>`, where libmtmd writes `<|vision_start|>`, which that vocabulary spells in
    plain text: the encoder swaps in the model's own tokens.)"""
    pixels, part = image
    question = {"type": "text", "text": "What is this?"}
    from PIL import Image

    theirs = reference.answer([{"type": "image"}, question], images=Image.fromarray(pixels))
    ours = served(http, [part, question])
    assert ours.prompt == chat(http, [question])["usage"]["prompt_tokens"] + 12 + 2  # the embeddings, the wrapping
    assert_same(ours, theirs, 1e-2)

    from omniserve.executors.mtmd_encoder import MtmdArgs, MtmdEncoderExecutor

    encoder = MtmdEncoderExecutor(MtmdArgs(model_path=str(tiny / "model.gguf"),
                                           mmproj_path=str(tiny / "mmproj.gguf")))
    try:
        assert encoder.load().media[0] == "image"
        chunks = encoder.encode_image(pixels)
    finally:
        encoder.close()
    block = next(c for c in chunks if c.embd is not None)
    assert block.span == 4 and block.positions[1].tolist() == [0] * 4 + [1] * 4 + [2] * 4  # rows, then columns
    theirs = reference.seen[-1].numpy()
    gap = np.linalg.norm(block.embd - theirs) / np.linalg.norm(theirs)
    print(f"libmtmd's image embeddings against transformers': relative gap {gap:.2e}")
    assert gap < 0.01


HEARS = ["qwen2_5_omni", "qwen3_omni_moe"]
SEES_ONLY = [f for f in IMAGE_SHAPES if f not in HEARS]


@pytest.mark.parametrize("family", HEARS, indirect=True)
def test_audio_is_heard_as_transformers_hears_it(http, reference, clip):
    audio, wav = clip
    ours = served(http, [audio_part(wav)])
    assert ours.prompt > 390  # the audio's own embeddings (750 or 390 per 30 s), not a transcript
    assert_same(ours, reference.answer([{"type": "audio"}], audio=audio), 1e-2)


@pytest.mark.parametrize("family", HEARS, indirect=True)
def test_image_and_audio_together(http, reference, image, clip):
    from PIL import Image

    pixels, part = image
    audio, wav = clip
    question = {"type": "text", "text": "Describe both."}
    theirs = reference.answer([{"type": "image"}, {"type": "audio"}, question], images=Image.fromarray(pixels),
                              audio=audio)
    assert_same(served(http, [part, audio_part(wav), question]), theirs, 1e-2)


@pytest.mark.parametrize("family", SEES_ONLY, indirect=True)
def test_audio_for_a_model_that_only_sees_is_read_as_whispers_transcript(http, image, clip):
    """The projector sees only, so speech to text stays on the route: the audio reaches the model as the words
    Whisper hears, exactly as if the user had typed them, beside the image's own embeddings."""
    _, part = image
    _, wav = clip
    r = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data={"model": "whisper-1"})
    assert r.status_code == 200, r.text
    words = {"type": "text", "text": r.json()["text"].strip()}
    assert len(words["text"].split()) >= 5
    question = {"type": "text", "text": "Describe both."}
    spoken = chat(http, [part, audio_part(wav), question])
    typed = chat(http, [part, words, question])
    assert spoken["usage"]["prompt_tokens"] == typed["usage"]["prompt_tokens"] < 750
    assert spoken["choices"][0]["message"]["content"] == typed["choices"][0]["message"]["content"]


def test_streamed_equals_whole_and_concurrent_equals_alone(http, image, clip, family):
    _, part = image
    _, wav = clip
    heard = [[audio_part(wav)], [part, audio_part(wav)]] if family in HEARS else [[part], [part, part]]
    contents = [[part, {"type": "text", "text": "What is this?"}], *heard, [{"type": "text", "text": "Hi!"}]]
    alone = [chat(http, c)["choices"][0]["message"]["content"] for c in contents]
    with ThreadPoolExecutor(len(contents)) as pool:
        together = list(pool.map(lambda c: chat(http, c)["choices"][0]["message"]["content"], contents))
    assert together == alone
    pieces = []
    with http.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": contents[2]}], "max_tokens": MAX_TOKENS, "temperature": 0,
            "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                pieces += [c["delta"].get("content") or "" for c in json.loads(line[6:])["choices"]]
    assert "".join(pieces) == alone[2]


def test_a_projector_of_another_model_fails_the_start_in_one_line():
    """Qwen3-VL's projector gives rows of 128 (its DeepStack features too); Qwen2.5-VL's text model takes 64."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "omniserve", "serve", "--model-path",
                           str(tiny_gguf("qwen2_5_vl") / "model.gguf"), "--mmproj",
                           str(tiny_gguf("qwen3_vl") / "mmproj.gguf"), "--tts-model", "none",
                           "--embedding-model", "none", "--asr-model", "none"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "could not load the projector" in last and "mismatch between text model (n_embd = 64) and mmproj " \
        "(n_embd = 128)" in last, done.stderr

