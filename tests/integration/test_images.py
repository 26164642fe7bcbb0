"""`/v1/images/generations` with sketch-rnn (real Magenta weights from ../shared/models):
drawings of the prompted category in every output format, inline or by URL."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_server, shared_models, wait_until


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    sketches = shared_models() / "sketch-rnn-quickdraw"
    with run_server("--image-model", f"sketch-rnn:{sketches}", "--max-generated-image-size", "1024",
                    "--image-ttl-seconds", "3", "--data-dir", str(tmp_path_factory.mktemp("imgdata")),
                    "--asr-model", "none", "--tts-model", "none", "--vision-model", "none",
                    tmp_path=tmp_path_factory.mktemp("img")) as server:
        yield server


@pytest.fixture(scope="module")
def images(image_server):
    return image_server.openai()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def ink(image: Image.Image) -> float:
    """The share of dark pixels: a drawing has some, a blank or noise image has none or most."""
    return float((np.asarray(image.convert("L")) < 128).mean())


def test_models_list_the_image_model(image_server):
    with image_server.http() as http:
        cards = {m["id"]: m["type"] for m in http.get("/v1/models").json()["data"]}
    assert cards["sketch-rnn"] == "image"


def test_generate_draws_the_prompted_thing(images):
    r = images.images.generate(model="sketch-rnn", prompt="A drawing of two cute dogs", n=2, size="256x256")
    assert len(r.data) == 2 and r.size == "256x256" and r.output_format == "png" and r.created
    assert r.usage.input_tokens == 6
    for item in r.data:
        assert item.revised_prompt == "a drawing of a dog"
        image = decode(item.b64_json)
        assert image.format == "PNG" and image.size == (256, 256) and image.mode == "RGB"
        assert 0.003 < ink(image) < 0.3


def test_prompt_matched_by_meaning(images):
    r = images.images.generate(model="sketch-rnn", prompt="an emergency vehicle", size="64x64")
    assert r.data[0].revised_prompt == "a drawing of a ambulance"


def test_seed_makes_it_repeatable(images):
    def draw(seed):
        return images.images.generate(model="sketch-rnn", prompt="a hedgehog", size="128x128",
                                      extra_body={"seed": seed}).data[0].b64_json
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_sizes_formats_and_quality(images, image_server):
    r = images.images.generate(model="sketch-rnn", prompt="a bicycle", extra_body={"width": 320, "height": 200})
    assert decode(r.data[0].b64_json).size == (320, 200)
    sizes = {}
    for fmt in ("jpeg", "webp"):
        for quality in ("low", "high"):
            r = images.images.generate(model="sketch-rnn", prompt="a sheep", output_format=fmt, quality=quality,
                                       size="512x512", extra_body={"seed": 1})
            image = decode(r.data[0].b64_json)
            assert image.format == fmt.upper() and 0.001 < ink(image) < 0.4
            sizes[fmt, quality] = len(r.data[0].b64_json)
        assert sizes[fmt, "low"] < sizes[fmt, "high"]
    # output_compression wins over quality
    a = images.images.generate(model="sketch-rnn", prompt="a sheep", output_format="jpeg", quality="low",
                               output_compression=95, extra_body={"seed": 1})
    b = images.images.generate(model="sketch-rnn", prompt="a sheep", output_format="jpeg", quality="high",
                               output_compression=95, extra_body={"seed": 1})
    assert a.data[0].b64_json == b.data[0].b64_json


def test_transparent_background(images):
    r = images.images.generate(model="sketch-rnn", prompt="a key", background="transparent")
    image = decode(r.data[0].b64_json)
    assert image.mode == "RGBA" and image.getpixel((0, 0))[3] == 0
    assert (np.asarray(image)[..., 3] > 0).mean() > 0.001


def test_url_images_are_served_then_expire(images, image_server):
    r = images.images.generate(model="sketch-rnn", prompt="a dolphin", response_format="url", output_format="webp")
    url = r.data[0].url
    with image_server.http() as http:
        got = http.get(url)
        assert got.status_code == 200 and got.headers["content-type"] == "image/webp"
        assert Image.open(io.BytesIO(got.content)).size == (512, 512)
        time.sleep(3.2)  # this server keeps them 3 s
        gone = http.get(url)
        assert gone.status_code == 404 and "expired" in gone.json()["error"]["message"]
        assert http.get("/v1/images/img_nope/content").status_code == 404
        assert http.get("/v1/images/..%2F..%2Fetc%2Fpasswd/content").status_code == 404


def test_a_prompt_naming_nothing_it_knows_draws_the_nearest(images, image_server):
    """OpenAI clients send any prompt: the nearest of the 28 things is drawn, and revised_prompt says which."""
    r = images.images.generate(model="sketch-rnn", prompt="a calico cat playing a piano", size="64x64")
    with image_server.http() as http:
        stage = next(s for s in http.get("/get_model_info").json()["stages"] if s["name"] == "image")
        categories = [c.replace("_", " ") for c in stage["info"]["categories"]]
    drawn = r.data[0].revised_prompt.removeprefix("a drawing of a ")
    assert drawn in categories and 0.003 < ink(decode(r.data[0].b64_json)) < 0.5


def test_strict_image_prompts_refuses_them(tmp_path):
    sketches = shared_models() / "sketch-rnn-quickdraw"
    with run_server("--image-model", f"sketch-rnn:{sketches}", "--strict-image-prompts", "--asr-model", "none",
                    "--tts-model", "none", "--vision-model", "none", "--embedding-model", "none",
                    tmp_path=tmp_path) as s, s.http() as http:
        r = http.post("/v1/images/generations", json={"prompt": "a sailing boat at sea"})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "prompt" and "ambulance, antyoga, bear" in err["message"]
        assert http.post("/v1/images/generations", json={"prompt": "a dog", "size": "64x64"}).status_code == 200
        # a video job learns it when it runs: the job fails, saying why
        job = http.post("/v1/videos", json={"prompt": "a sailing boat", "size": "64x64", "seconds": "1"}).json()
        failed = wait_until(lambda: (j := http.get(f"/v1/videos/{job['id']}").json())["status"] == "failed" and j)
        assert "ambulance" in failed["error"]["message"] and failed["error"]["code"]


@pytest.mark.parametrize("body, param, words", [
    ({"prompt": ""}, "prompt", "empty"),
    ({"prompt": "   "}, "prompt", "empty"),
    ({"prompt": "a dog", "n": 0}, "n", "greater than or equal to 1"),
    ({"prompt": "a dog", "n": 11}, "n", "less than or equal to 10"),
    ({"prompt": "a dog", "size": "big"}, "size", "WIDTHxHEIGHT"),
    ({"prompt": "a dog", "size": "8x8"}, "size", "16 to 4096"),
    ({"prompt": "a dog", "size": "2048x2048"}, "size", "--max-generated-image-size"),
    ({"prompt": "a dog", "output_format": "gif"}, "output_format", "png"),
    ({"prompt": "a dog", "response_format": "file"}, "response_format", "b64_json"),
    ({"prompt": "a dog", "output_compression": 101}, "output_compression", "100"),
    ({"prompt": "a dog", "background": "transparent", "output_format": "jpeg"}, "background", "png or webp"),
    ({"prompt": "a dog", "model": "smollm2-135m"}, "model", "/v1/chat/completions"),
])
def test_bad_requests_are_400(image_server, body, param, words):
    with image_server.http() as http:
        r = http.post("/v1/images/generations", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err


def test_a_server_without_an_image_model(http):
    r = http.post("/v1/images/generations", json={"prompt": "a dog"})
    assert r.status_code == 400 and "no image-generation model" in r.json()["error"]["message"]


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_edit_draws_inside_the_mask_only(images):
    base = np.full((256, 256, 3), 200, np.uint8)
    mask = np.full((256, 256, 4), 255, np.uint8)
    mask[64:192, 128:256, 3] = 0  # transparent: draw here
    r = images.images.edit(model="sketch-rnn", image=("base.png", png(base)), mask=("mask.png", png(mask)),
                           prompt="a tiger", extra_body={"seed": 2})
    edited = np.asarray(decode(r.data[0].b64_json).convert("RGB"))
    assert edited.shape == (256, 256, 3) and r.data[0].revised_prompt == "a drawing of a tiger"
    changed = (edited != 200).any(axis=2)
    assert changed[64:192, 128:256].mean() > 0.003  # ink inside the area
    assert not changed[:64].any() and not changed[:, :128].any() and not changed[192:].any()  # nothing outside


def test_edit_without_mask_and_with_size(images):
    base = np.asarray(Image.open(io.BytesIO(png(np.full((100, 150, 3), 255, np.uint8)))))
    r = images.images.edit(model="sketch-rnn", image=("base.png", png(base)), prompt="a bird", size="300x200",
                           n=2, response_format="b64_json")
    assert len(r.data) == 2
    for item in r.data:
        image = decode(item.b64_json)
        assert image.size == (300, 200) and 0.002 < ink(image) < 0.4


def test_edit_as_json_with_urls(image_server):
    """OpenAI's JSON edit: images and the mask by URL (data URLs here)."""
    base = np.full((128, 128, 3), 255, np.uint8)
    mask = np.full((128, 128, 4), 255, np.uint8)
    mask[:, 64:, 3] = 0
    url = lambda data: "data:image/png;base64," + base64.b64encode(data).decode()  # noqa: E731
    with image_server.http() as http:
        r = http.post("/v1/images/edits", json={"prompt": "a cat", "seed": 3, "images": [{"image_url": url(png(base))}],
                                               "mask": {"image_url": url(png(mask))}})
    assert r.status_code == 200, r.text
    edited = np.asarray(decode(r.json()["data"][0]["b64_json"]).convert("RGB"))
    changed = (edited != 255).any(axis=2)
    assert changed[:, 64:].mean() > 0.003 and not changed[:, :64].any()


def test_edit_several_images_edits_each(image_server):
    """`image[]` several times: each image is edited, n results per image, in order."""
    wide = png(np.full((64, 96, 3), 255, np.uint8))
    tall = png(np.full((96, 64, 3), 255, np.uint8))
    with image_server.http() as http:
        r = http.post("/v1/images/edits", files=[("image[]", ("a.png", wide)), ("image[]", ("b.png", tall))],
                      data={"prompt": "a dog", "n": "2"})
    assert r.status_code == 200, r.text
    assert [decode(d["b64_json"]).size for d in r.json()["data"]] == [(96, 64), (96, 64), (64, 96), (64, 96)]


def test_edit_bad_input(image_server):
    base = png(np.full((64, 64, 3), 255, np.uint8))
    opaque = png(np.full((64, 64, 4), 255, np.uint8))
    small = png(np.zeros((32, 32, 4), np.uint8))
    cases = [
        ({"image": ("a.png", b"not an image")}, "image", "not an image"),
        ({"image": ("a.png", base), "mask": ("m.png", small)}, "mask", "same size"),
        ({"image": ("a.png", base), "mask": ("m.png", opaque)}, "mask", "no fully transparent area"),
        ({"mask": ("m.png", opaque)}, "image", "file field named image"),
    ]
    with image_server.http() as http:
        for files, param, words in cases:
            r = http.post("/v1/images/edits", files=files, data={"prompt": "a dog"})
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["param"] == param and words in err["message"], err
        r = http.post("/v1/images/edits", files={"image": ("a.png", base)}, data={"prompt": ""})
        assert r.json()["error"]["param"] == "prompt"
        r = http.post("/v1/images/edits", json={"prompt": "a dog"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "images", r.text
        r = http.post("/v1/images/edits", json={"prompt": "a dog", "images": [{"file_id": "file-1"}]})
        assert r.status_code == 400 and "Files API" in r.json()["error"]["message"], r.text
        r = http.post("/v1/images/edits", content=b"prompt=a+dog", headers={"content-type": "text/plain"})
        assert r.status_code == 415 and "multipart" in r.json()["error"]["message"]


def test_chat_with_an_image_model_returns_images(image_server):
    with image_server.http() as http:
        r = http.post("/v1/chat/completions", json={
            "model": "sketch-rnn", "messages": [{"role": "user", "content": "Draw a rabbit, please"}],
            "extra_body": {"height": 128, "width": 160, "seed": 5}})
        assert r.status_code == 200, r.text
        content = r.json()["choices"][0]["message"]["content"]
        assert [p["type"] for p in content] == ["image_url"]
        url = content[0]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        image = decode(url.split(",", 1)[1])
        assert image.size == (160, 128) and 0.003 < ink(image) < 0.4
        r = http.post("/v1/chat/completions", json={
            "model": "sketch-rnn", "messages": [{"role": "user", "content": "Draw a boat"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"][0]["type"] == "image_url"
        r = http.post("/v1/chat/completions", json={
            "model": "sketch-rnn", "stream": True, "messages": [{"role": "user", "content": "a dog"}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stream"


def test_sglang_diffusion_model_info(image_server, http):
    with image_server.http() as client:
        info = client.get("/models").json()
    assert info["id"] == "sketch-rnn" and info["model_path"].endswith("sketch-rnn-quickdraw")
    assert info["task_type"] == "T2I" and "T2V" in info["tasks"] and info["pipeline_name"] == "sketch_rnn_pipeline"
    assert info["pipeline_class"] == "SketchRnn"
    assert info["stages"] == [{"name": "image", "executor": "sketch_rnn", "healthy": True}]
    r = http.get("/models")  # the default server has no image model
    assert r.status_code == 400 and "no image-generation model" in r.json()["error"]["message"]
