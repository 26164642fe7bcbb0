"""Images and video in, through the real server: the ImageNet classifier and OCR describe
each picture to the thinker, video frames go through the same stage in time order, and a
video's sound goes through speech to text."""

from __future__ import annotations

import base64

from tests.media_helpers import SPOKEN, cat_video, data_url, image_part, photo_url, video_part

PAGE_WORDS = ("segmentation", "markers", "coins", "background", "histogram", "region")


def ask(client, content, **extra):
    r = client.chat.completions.create(model="smollm2-135m", temperature=0, max_tokens=60,
                                       messages=[{"role": "user", "content": content}], extra_body=extra or None)
    return r


def test_models_list_the_vision_stage(http):
    cards = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert cards["imagenet-ocr"]["type"] == "vision"


def test_cat_photo_names_a_cat(client):
    answer = ask(client, [image_part(photo_url("chelsea.png")), {"type": "text", "text": "What animal is this?"}])
    assert "cat" in answer.choices[0].message.content.lower()


def test_printed_text_is_quoted(client):
    # image first: with the question first, SmolLM2-135M's greedy answer hangs on float noise (the KV
    # cache's layout is enough to tip it from quoting the page to paraphrasing it)
    answer = ask(client, [image_part(photo_url("page.png")), {"type": "text", "text": "What does the text say?"}])
    reply = answer.choices[0].message.content.lower()
    assert any(word in reply for word in PAGE_WORDS), reply


def test_top_level_images_list(http):
    r = http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "What animal is this?"}], "images": [photo_url("chelsea.png")],
        "temperature": 0, "max_tokens": 40})
    assert r.status_code == 200, r.text
    assert "cat" in r.json()["choices"][0]["message"]["content"].lower()


def test_every_image_reaches_the_thinker(client):
    one = ask(client, [image_part(photo_url("coffee.png")), {"type": "text", "text": "Describe."}])
    two = ask(client, [image_part(photo_url("coffee.png")), image_part(photo_url("chelsea.png")),
                       {"type": "text", "text": "Describe."}])
    assert two.usage.prompt_tokens > one.usage.prompt_tokens + 8


def test_image_and_spoken_question(client):
    """The seed's "Audio and Image Input": a photo plus a question asked aloud."""
    audio = base64.b64encode(SPOKEN.read_bytes()).decode()
    text_only = ask(client, [image_part(photo_url("chelsea.png"))])
    both = ask(client, [image_part(photo_url("chelsea.png")),
                        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}])
    via_url = ask(client, [image_part(photo_url("chelsea.png")),
                           {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{audio}"}}])
    assert both.usage.prompt_tokens > text_only.usage.prompt_tokens + 5
    assert via_url.usage.prompt_tokens == both.usage.prompt_tokens


def test_video_frames_and_sound(client):
    url = data_url(cat_video(), "video/mp4")
    answer = ask(client, [video_part(url), {"type": "text", "text": "What animal is in this video?"}])
    silent = ask(client, [video_part(url), {"type": "text", "text": "What animal is in this video?"}],
                 use_audio_in_video=False)
    assert "cat" in silent.choices[0].message.content.lower()
    assert answer.usage.prompt_tokens > silent.usage.prompt_tokens + 5  # the transcript of the sound track
    fewer = ask(client, [video_part(url), {"type": "text", "text": "What animal is in this video?"}],
                use_audio_in_video=False, video_max_frames=2)
    assert silent.usage.prompt_tokens > fewer.usage.prompt_tokens + 10  # 4 frames (1 per second) against 2


def test_video_without_sound_and_top_level_videos(http):
    r = http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "What animal is in this video?"}],
        "videos": [data_url(cat_video(False), "video/mp4")], "video_fps": 2, "temperature": 0, "max_tokens": 40})
    assert r.status_code == 200, r.text
    assert "cat" in r.json()["choices"][0]["message"]["content"].lower()


def test_streamed_answer_about_an_image(client):
    stream = client.chat.completions.create(
        model="smollm2-135m", temperature=0, max_tokens=30, stream=True,
        messages=[{"role": "user", "content": [image_part(photo_url("chelsea.png")),
                                               {"type": "text", "text": "What animal is this?"}]}])
    assert "cat" in "".join(c.choices[0].delta.content or "" for c in stream if c.choices).lower()


# ---- http(s) and file inputs: a local media server (tests/integration/conftest.py) -------------


def test_http_image_and_video_urls(open_client, media_url):
    animal = {"type": "text", "text": "What animal is this?"}
    answer = ask(open_client, [image_part(f"{media_url}/chelsea.png"), animal])
    assert "cat" in answer.choices[0].message.content.lower()
    answer = ask(open_client, [video_part(f"{media_url}/short.mp4"), animal])
    assert "cat" in answer.choices[0].message.content.lower()
    text = {"type": "text", "text": "What does the text say?"}
    answer = ask(open_client, [image_part(f"{media_url}/page.png"), text])
    assert any(word in answer.choices[0].message.content.lower() for word in PAGE_WORDS)


def test_redirects_are_followed_three_times(open_client, media_url):
    answer = ask(open_client, [image_part(f"{media_url}/hop/3"), {"type": "text", "text": "What animal is this?"}])
    assert "cat" in answer.choices[0].message.content.lower()


def test_file_paths_inside_the_allowed_folder(open_client, media_dir):
    for url in (f"file://{media_dir}/chelsea.png", str(media_dir / "chelsea.png"), "chelsea.png"):
        answer = ask(open_client, [image_part(url), {"type": "text", "text": "What animal is this?"}])
        assert "cat" in answer.choices[0].message.content.lower(), url
