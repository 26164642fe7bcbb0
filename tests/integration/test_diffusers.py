"""A diffusers model as three stages (text encoder -> denoiser -> VAE), and SGLang Diffusion's
LoRA API, on tiny random-weight Stable Diffusion and Wan pipelines built here
(`scripts/make_tiny_diffusers.py`). Their pictures are noise, so the tests check the
mechanics against diffusers' own `StableDiffusionPipeline` and `WanPipeline` on the same seed."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import MODEL_DATA, ROOT, run_server
from tests.media_helpers import finished, video_frames

GEN = {"size": "64x64", "extra_body": {"num_inference_steps": 4, "seed": 7, "guidance_scale": 5.0}}


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    out = MODEL_DATA / "tiny-sd"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_diffusers.py"), str(out / "model"),
                           "--lora", str(out / "lora"), "--wan", str(MODEL_DATA / "tiny-wan"),
                           "--wan-lora", str(MODEL_DATA / "tiny-wan-lora")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loras = tmp_path_factory.mktemp("loras")
    shutil.copytree(out / "lora", loras / "style")
    (loras / "broken").mkdir()
    (loras / "broken" / "pytorch_lora_weights.safetensors").write_bytes(b"junk")
    return out / "model", loras


@pytest.fixture(scope="module")
def sd_server(tiny_sd, tmp_path_factory):
    model, loras = tiny_sd
    with run_server("--image-model", f"diffusers:{model}", "--lora-dir", str(loras), "--asr-model", "none",
                    "--tts-model", "none", "--vision-model", "none",
                    tmp_path=tmp_path_factory.mktemp("sd")) as server:
        yield server


def pixels(item) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item.b64_json))).convert("RGB")).astype(int)


def generate(server, **extra):
    return server.openai().images.generate(model="model", prompt="a cat", **{**GEN, **extra})


def test_stages_and_model_info(sd_server):
    with sd_server.http() as http:
        info = http.get("/models").json()
    assert info["pipeline_class"] == "StableDiffusionPipeline" and info["task_type"] == "T2I"
    assert [s["name"] for s in info["stages"]] == ["image_text_encoder", "image_denoiser", "image_vae"]


def test_images_match_diffusers_own_pipeline(sd_server, tiny_sd):
    import torch
    from diffusers import StableDiffusionPipeline

    r = generate(sd_server, n=2)
    assert len(r.data) == 2 and r.size == "64x64"
    served = [pixels(item) for item in r.data]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd[0])
    pipe.set_progress_bar_config(disable=True)
    reference = pipe("a cat", num_inference_steps=4, guidance_scale=5.0, height=64, width=64, num_images_per_prompt=2,
                     generator=torch.Generator().manual_seed(7), output_type="np").images
    for got, want in zip(served, reference, strict=True):
        assert np.abs(got - np.round(want * 255)).max() <= 2
    assert np.abs(served[0] - served[1]).mean() > 5  # two images, two draws of noise
    again = pixels(generate(sd_server).data[0])
    assert np.abs(again - served[0]).max() <= 2  # the same seed, the same image (batch sizes round apart)


def test_lora_set_merge_unmerge_list(sd_server):
    base = pixels(generate(sd_server).data[0])
    with sd_server.http() as http:
        r = http.post("/v1/set_lora", json={"lora_nickname": "style", "lora_path": "style", "strength": 1.0})
        assert r.status_code == 200, r.text
        assert r.json()["loras"] == [{"lora_nickname": "style", "path": r.json()["loras"][0]["path"],
                                      "strength": 1.0}]
        styled = pixels(generate(sd_server).data[0])
        assert np.abs(styled - base).mean() > 1  # the adapter changes the picture
        assert http.post("/v1/merge_lora_weights").json()["merged"] is True
        merged = pixels(generate(sd_server).data[0])
        assert np.abs(merged - styled).max() <= 3  # merged into the weights: the same picture
        assert http.post("/v1/unmerge_lora_weights").json()["merged"] is False
        r = http.post("/v1/set_lora", json={"lora_nickname": ["style"], "lora_path": ["style"], "strength": [0.0],
                                            "target": "unet"})
        assert r.status_code == 200, r.text
        off = pixels(generate(sd_server).data[0])
        assert np.abs(off - base).max() <= 3  # strength 0: back to the base model
        listed = http.get("/v1/list_loras").json()
        assert listed["loras"][0]["strength"] == 0.0 and listed["merged"] is False


@pytest.mark.parametrize("body, param, words", [
    ({"lora_nickname": "x", "lora_path": "../../etc"}, "lora_path", "inside the LoRA folder"),
    ({"lora_nickname": "x", "lora_path": "/etc/passwd"}, "lora_path", "inside the LoRA folder"),
    ({"lora_nickname": "x", "lora_path": "broken"}, "lora_path", "could not load"),
    ({"lora_nickname": "x"}, "lora_path", "give the adapter's path"),
    ({"lora_nickname": ["a", "b"], "lora_path": ["style"]}, "lora_path", "one per lora_nickname"),
    ({"lora_nickname": "x", "lora_path": "style", "target": "text_encoder"}, "target", "denoiser"),
    ({"lora_path": "style"}, "lora_nickname", "required"),
])
def test_bad_lora_requests(sd_server, body, param, words):
    with sd_server.http() as http:
        r = http.post("/v1/set_lora", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err


def test_bad_sizes_and_a_model_without_lora(sd_server, tmp_path):
    with sd_server.http() as http:
        r = http.post("/v1/images/generations", json={"prompt": "a cat", "size": "63x64"})
        assert r.status_code == 400 and "divisible by 2" in r.json()["error"]["message"]
    from tests.conftest import shared_models

    sketches = shared_models() / "sketch-rnn-quickdraw"
    with run_server("--image-model", f"sketch-rnn:{sketches}", "--asr-model", "none", "--tts-model", "none",
                    "--vision-model", "none", tmp_path=tmp_path) as server, server.http() as http:
        r = http.post("/v1/set_lora", json={"lora_nickname": "x", "lora_path": "style"})
        assert r.status_code == 400 and "cannot take LoRA" in r.json()["error"]["message"]


def test_concurrent_requests_batch_and_match_alone(sd_server):
    """Requests at different points of their schedules share UNet calls; each image must still
    be the one its seed makes alone."""
    from concurrent.futures import ThreadPoolExecutor

    def make(seed, steps):
        extra = {"num_inference_steps": steps, "seed": seed, "guidance_scale": 5.0}
        return pixels(generate(sd_server, extra_body=extra).data[0])

    alone = {seed: make(seed, 3 + seed % 3) for seed in (1, 2, 3, 4)}
    with ThreadPoolExecutor(4) as pool:
        together = dict(zip(alone, pool.map(lambda s: make(s, 3 + s % 3), alone), strict=True))
    for seed in alone:
        assert np.abs(together[seed] - alone[seed]).max() <= 2, seed


# ---- Wan: text to video, and one-frame images ----------------------------------------------

WAN = MODEL_DATA / "tiny-wan"


@pytest.fixture(scope="module")
def wan_server(tiny_sd, tmp_path_factory):
    loras = tmp_path_factory.mktemp("wan-loras")
    shutil.copytree(MODEL_DATA / "tiny-wan-lora", loras / "motion")
    with run_server("--image-model", f"diffusers:{WAN}", "--lora-dir", str(loras), "--asr-model", "none",
                    "--tts-model", "none", "--vision-model", "none",
                    tmp_path=tmp_path_factory.mktemp("wan")) as server:
        yield server


def wan_reference(frames: int):
    import torch
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(WAN)
    pipe.set_progress_bar_config(disable=True)
    return pipe("a cat", num_inference_steps=4, guidance_scale=5.0, height=64, width=64, num_frames=frames,
                generator=torch.Generator().manual_seed(7), output_type="np").frames[0]


def test_wan_images_match_wan_pipeline(wan_server):
    with wan_server.http() as http:
        info = http.get("/models").json()
    assert info["pipeline_class"] == "WanPipeline" and info["tasks"] == ["T2V", "T2I"]
    served = pixels(wan_server.openai().images.generate(model="tiny-wan", prompt="a cat", **GEN).data[0])
    assert np.abs(served - np.round(wan_reference(1)[0] * 255)).max() <= 2


def test_wan_video_job_matches_wan_pipeline(wan_server):
    videos = wan_server.openai().videos
    job = videos.create(model="tiny-wan", prompt="a cat", size="64x64",
                        extra_body={"num_frames": 9, "fps": 8, "quality": "maximum", **GEN["extra_body"]})
    done = finished(videos, job.id)
    assert done.status == "completed", done.error
    clip = np.stack(video_frames(videos.download_content(job.id).read())).astype(int)
    want = np.round(wan_reference(9) * 255)
    assert clip.shape == want.shape == (9, 64, 64, 3)
    assert np.abs(clip - want).mean() < 4  # H.264 at its best preset: close, not exact


def test_wan_takes_a_lora_on_its_transformer(wan_server):
    def image():
        return pixels(wan_server.openai().images.generate(model="tiny-wan", prompt="a cat", **GEN).data[0])

    base = image()
    with wan_server.http() as http:
        r = http.post("/v1/set_lora", json={"lora_nickname": "motion", "lora_path": "motion", "target": "transformer"})
        assert r.status_code == 200, r.text
        styled = image()
        r = http.post("/v1/set_lora", json={"lora_nickname": "motion", "lora_path": "motion", "strength": 0.0})
        assert r.status_code == 200, r.text
    off = image()
    # the tiny Wan's random VAE maps very different latents to nearly the same picture, so the adapter
    # (which doubles the transformer's output) moves pixels by a level or two, but many of them
    assert np.mean(styled != base) > 0.3
    assert np.mean(off != base) < 0.05


def test_a_still_image_model_cannot_make_videos(sd_server):
    with sd_server.http() as http:
        r = http.post("/v1/videos", json={"prompt": "a cat", "size": "64x64"})
    assert r.status_code == 400 and "cannot make videos" in r.json()["error"]["message"], r.text


def test_on_ray_the_payloads_go_through_the_object_store_and_the_image_is_the_same(sd_server, tiny_sd, tmp_path):
    """With `--ray-object-store-min-bytes 0`, the prompt embeddings and the latents go from actor to actor through
    Ray's object store (the coordinator only sees their references), and the image is the one the local
    processes make."""
    with run_server("--worker-backend", "ray", "--ray-object-store-min-bytes", "0", "--image-model",
                    f"diffusers:{tiny_sd[0]}", "--asr-model", "none", "--tts-model", "none", "--vision-model", "none",
                    "--embedding-model", "none", tmp_path=tmp_path, timeout=300) as on_ray, on_ray.http() as http:
        image = pixels(generate(on_ray).data[0])
        metrics = http.get("/metrics").text
    assert np.abs(image - pixels(generate(sd_server).data[0])).max() <= 2
    for stage in ("image_text_encoder", "image_denoiser"):
        sent = re.search(rf'omniserve_payload_object_store_bytes_total\{{model="[^"]*",stage="{stage}"\}} (\S+)',
                         metrics)
        assert sent and float(sent.group(1)) > 1000, stage
