"""Every bad image or video input is a 400 naming the item, never a 500; URLs to private
addresses and file paths outside the allowed folder are refused without revealing anything."""

from __future__ import annotations

import os

import pytest

from tests.media_helpers import SPOKEN, data_url, image_part, photo_url, png_bytes, skimage_photo, video_part


def post(http, content, **extra):
    return http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}],
                                                   "max_tokens": 5, **extra})


def error(r, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


QUESTION = {"type": "text", "text": "What is this?"}


@pytest.mark.parametrize("url, words", [
    (data_url(b"definitely not an image" * 10, "image/png"), "not an image"),
    (data_url(png_bytes((64, 64))[:60], "image/png"), "truncated"),
    (data_url(b"", "image/png"), "empty"),
    ("data:image/png;base64,@@@not-base64@@@", "base64"),
    ("data:image/png,rawdata", "data:<mime>;base64"),
    (data_url(png_bytes(), "audio/wav"), "declared as 'audio/wav'"),
    (data_url(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"), "png, jpeg"),
    ("ftp://example.com/cat.png", "http(s)://"),
    ("", "URL string"),
])
def test_bad_images_name_the_item(http, url, words):
    err = error(post(http, [QUESTION, image_part(url)]))
    assert err["param"] == "messages[0].content[1]" and words in err["message"], err


def test_decompression_bomb_is_a_400(http):
    bomb = png_bytes((6000, 6000), mode="1")  # 36 Mpixels in a few kB; the limit is 25 M
    assert len(bomb) < 100_000
    err = error(post(http, [image_part(data_url(bomb, "image/png"))]))
    assert "--max-image-pixels" in err["message"] and err["param"] == "messages[0].content[0]"


def test_bad_videos_name_the_item(http):
    err = error(post(http, [QUESTION, video_part(data_url(b"\x00" * 500, "video/mp4"))]))
    assert err["param"] == "messages[0].content[1]" and "could not decode the video" in err["message"]
    err = error(post(http, [QUESTION, video_part(photo_url("chelsea.png"))]))
    assert "expected video" in err["message"]
    err = error(post(http, [QUESTION], videos=[data_url(SPOKEN.read_bytes(), "video/mp4")]))  # sound only
    assert err["param"] == "videos[0]" and "no video stream" in err["message"]
    for bad in ({"video_fps": 0}, {"video_max_frames": 0}, {"video_max_frames": 1000}):
        assert error(post(http, [QUESTION], **bad))["param"] == next(iter(bad))


def test_unknown_part_and_top_level_errors(http):
    err = error(post(http, [QUESTION, {"type": "input_image", "image_url": "x"}]))
    assert err["param"] == "messages[0].content[1]" and "image_url" in err["message"]
    err = error(http.post("/v1/chat/completions", json={
        "messages": [{"role": "system", "content": "hi"}], "images": [photo_url("chelsea.png")]}))
    assert err["param"] == "images" and "no user message" in err["message"]


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:1/cat.png", "http://localhost/cat.png", "http://10.1.2.3/cat.png",
    "http://172.16.0.1/cat.png", "http://192.168.1.1/cat.png", "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/cat.png", "http://[fd00::1]/cat.png", "http://[::ffff:127.0.0.1]/cat.png",
    "http://2130706433/cat.png", "http://0x7f.1/cat.png",
])
def test_private_addresses_are_refused(http, url):
    err = error(post(http, [QUESTION, image_part(url)]))
    assert err["param"] == "messages[0].content[1]", err
    assert "private or local address" in err["message"] or "cannot resolve" in err["message"], err


def test_file_paths_are_off_by_default(http):
    for url in ("file:///etc/passwd", "/etc/passwd", str(skimage_photo("chelsea.png"))):
        err = error(post(http, [image_part(url)]))
        assert "--allowed-local-media-path" in err["message"] and "passwd" not in err["message"]


def test_paths_outside_the_allowed_folder(open_server, media_dir, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes())
    (media_dir / "escape.png").unlink(missing_ok=True)
    os.symlink(secret, media_dir / "escape.png")
    answers = []
    with open_server.http() as http:
        for url in (str(secret), f"file://{secret}", "../" * 12 + str(secret).lstrip("/"),
                    f"{media_dir}/../{secret.parent.name}/secret.png", "escape.png", "missing.png",
                    str(media_dir / "missing.png"), "file://otherhost/etc/passwd"):
            err = error(post(http, [image_part(url)]))
            assert err["param"] == "messages[0].content[0]", url
            answers.append(err["message"])
    # Outside, through .., through a symlink, or missing: one answer, which reveals nothing.
    assert len(set(answers[:7])) == 1 and "inside the allowed media folder" in answers[0]
    assert "local path" in answers[7]


def test_limits_on_the_open_server(open_server, media_dir, media_url):
    with open_server.http() as http:
        err = error(post(http, [video_part("cat.mp4")]))  # 4 s; this server allows 3
        assert "--max-video-seconds" in err["message"] and err["param"] == "messages[0].content[0]"
        err = error(post(http, [image_part(f"{media_url}/hop/4")]))
        assert "more than 3 redirects" in err["message"]
        err = error(post(http, [image_part(f"{media_url}/notes.txt")]))
        assert "declared as 'text/plain'" in err["message"]
        err = error(post(http, [image_part(f"{media_url}/nothing.png")]))
        assert "HTTP 404" in err["message"]
        err = error(post(http, [image_part("chelsea.png")] * 2, images=["chelsea.png"] * 2))
        assert "4 media items" in err["message"] and "--max-media-items" in err["message"]
        assert err["param"] == "images[1]"
