"""A real vision-language GGUF (`--model-path` + `--mmproj`): its own image encoder runs as the
`vision` stage and the thinker decodes the image embeddings in place of the image.

The model is a tiny random-weight SmolVLM built here and converted with llama.cpp's
`convert_hf_to_gguf.py --mmproj` (`scripts/make_tiny_vlm.py`). Its answers are noise, so
the test checks the mechanics against llama-cpp-python's own multimodal path
(`MTMDChatHandler`) on the same prompt: the same prompt size and the same log-probabilities.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import MODEL_DATA, ROOT, run_server
from tests.media_helpers import image_part, photo_url

QUESTION = "What is it?"  # the image follows with no space: omniserve joins a media marker to its neighbours


@pytest.fixture(scope="module")
def tiny_vlm():
    out = MODEL_DATA / "tiny-vlm"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_vlm.py"), str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"building the tiny VLM failed:\n{done.stdout}\n{done.stderr}"
    return out


@pytest.fixture(scope="module")
def vlm_server(tiny_vlm, tmp_path_factory):
    with run_server("--model-path", str(tiny_vlm / "model.gguf"), "--mmproj", str(tiny_vlm / "mmproj.gguf"),
                    "--asr-model", "none", "--tts-model", "none",
                    tmp_path=tmp_path_factory.mktemp("vlm")) as server:
        yield server


def reference(tiny_vlm, names: list[str]) -> list[dict]:
    """llama-cpp-python's own answer for each image: prompt size and first log-probabilities."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import MTMDChatHandler

    handler = MTMDChatHandler(clip_model_path=str(tiny_vlm / "mmproj.gguf"), verbose=False)
    llm = Llama(model_path=str(tiny_vlm / "model.gguf"), chat_handler=handler, n_ctx=512, n_threads=2,
                verbose=False, logits_all=True)
    out = []
    for name in names:
        r = llm.create_chat_completion(
            messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                                   {"type": "image_url", "image_url": {"url": photo_url(name)}}]}],
            max_tokens=4, temperature=0, logprobs=True, top_logprobs=1)
        out.append({"prompt_tokens": r["usage"]["prompt_tokens"],
                    "logprobs": [float(t["logprob"]) for t in r["choices"][0]["logprobs"]["content"]]})
    return out


def test_models_list_the_projector(vlm_server):
    with vlm_server.http() as http:
        cards = {m["id"]: m["type"] for m in http.get("/v1/models").json()["data"]}
    assert cards == {"model": "chat", "mmproj": "vision", "all-MiniLM-L6-v2": "embedding"}


def test_image_embeddings_match_llama_cpp(vlm_server, tiny_vlm):
    client = vlm_server.openai()
    names = ["chelsea.png", "coffee.png"]
    served = []
    for name in names:
        r = client.chat.completions.create(
            model="model", temperature=0, max_tokens=4, logprobs=True,
            messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                                   image_part(photo_url(name))]}])
        served.append({"prompt_tokens": r.usage.prompt_tokens,
                       "logprobs": [t.logprob for t in r.choices[0].logprobs.content]})
    text_only = client.chat.completions.create(model="model", max_tokens=1,
                                               messages=[{"role": "user", "content": QUESTION}])
    expected = reference(tiny_vlm, names)
    for got, want in zip(served, expected, strict=True):
        assert got["prompt_tokens"] == want["prompt_tokens"]
        assert got["logprobs"] == pytest.approx(want["logprobs"], abs=2e-3)
    assert served[0]["prompt_tokens"] > text_only.usage.prompt_tokens + 30  # the image's 32 embeddings
    # Different pictures, different next-token distributions: the embeddings reach the model.
    assert abs(served[0]["logprobs"][0] - served[1]["logprobs"][0]) > 0.01


def test_video_frames_and_several_images(vlm_server):
    from tests.media_helpers import cat_video, data_url, video_part

    with vlm_server.http() as http:
        one = http.post("/v1/chat/completions", json={"max_tokens": 2, "messages": [
            {"role": "user", "content": [image_part(photo_url("chelsea.png"))]}]}).json()
        two = http.post("/v1/chat/completions", json={"max_tokens": 2, "messages": [
            {"role": "user", "content": [image_part(photo_url("chelsea.png")), image_part(photo_url("coffee.png"))]}]})
        video = http.post("/v1/chat/completions", json={"max_tokens": 2, "video_max_frames": 3, "messages": [
            {"role": "user", "content": [video_part(data_url(cat_video(False), "video/mp4"))]}]})
        assert two.status_code == 200 and video.status_code == 200, (two.text, video.text)
        per_image = two.json()["usage"]["prompt_tokens"] - one["usage"]["prompt_tokens"]
        assert per_image > 30
        assert video.json()["usage"]["prompt_tokens"] > 3 * per_image
