"""Pure logic of image and video input: decoding under limits, frame sampling, placeholder
filling, the local-path guard and the address check."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniserve.errors import InvalidRequest
from omniserve.executors.describer import describe_text
from omniserve.media.images import decode_image
from omniserve.media.inputs import MediaLimits, _pinned, _read_local
from omniserve.media.video import decode_video
from omniserve.runtime.types import audio_part, fill_media_parts, image_part, media_kinds, media_order, video_part
from tests.media_helpers import make_video


def png(size, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, "white").save(buf, format="PNG")
    return buf.getvalue()


def test_decode_image_checks_pixels_before_decoding():
    assert decode_image(png((4, 3), "L"), where="x", max_pixels=12).shape == (3, 4, 3)
    with pytest.raises(InvalidRequest, match="over the limit of 11"):
        decode_image(png((4, 3)), where="x", max_pixels=11)
    with pytest.raises(InvalidRequest, match="truncated"):
        decode_image(png((64, 64))[:70], where="x", max_pixels=10**6)


def scenes(*colors, seconds=1.0):
    return [(np.full((32, 48, 3), c, np.uint8), seconds) for c in colors]


def test_video_frames_are_evenly_spaced_and_capped():
    data = make_video(scenes(0, 80, 160, 240), fps=10)  # 4 s
    clip = decode_video(data, where="v", fps=1, max_frames=8, max_seconds=10, max_pixels=10**6, with_audio=True,
                        max_audio_seconds=10)
    assert clip.timestamps == [0.0, 1.0, 2.0, 3.0] and clip.audio is None
    means = [f.mean() for f in clip.frames]
    assert all(b > a + 40 for a, b in zip(means, means[1:], strict=False)), means  # one frame per scene, in order
    clip = decode_video(data, where="v", fps=5, max_frames=2, max_seconds=10, max_pixels=10**6, with_audio=False,
                        max_audio_seconds=10)
    assert clip.timestamps == [0.0, 2.0]  # 2 frames spread over the whole video
    with pytest.raises(InvalidRequest, match="--max-video-seconds"):
        decode_video(data, where="v", fps=1, max_frames=8, max_seconds=3, max_pixels=10**6, with_audio=False,
                     max_audio_seconds=10)
    with pytest.raises(InvalidRequest, match="--max-image-pixels"):
        decode_video(data, where="v", fps=1, max_frames=8, max_seconds=10, max_pixels=1000, with_audio=False,
                     max_audio_seconds=10)


def test_fill_media_parts_renders_images_and_videos_in_order():
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Look:"}, image_part(0), video_part([1, 2], [0.0, 1.5], 2.0, 0),
        {"type": "text", "text": "Well?"}]}]
    assert media_kinds(messages) == {"image", "audio"}
    texts = {("image", 0): "a cat", ("image", 1): "a dog", ("image", 2): "a ball", ("audio", 0): " woof "}
    content = fill_media_parts(messages, texts)[0]["content"]
    assert content == ('Look: [Image: a cat] [Video, 2.0 s long. Frames in time order: at 0 s, a dog; at 1.5 s, '
                       'a ball. Its audio track says: "woof"] Well?')


def test_a_model_that_encodes_media_gets_markers_in_the_order_it_gets_their_embeddings():
    messages = [{"role": "user", "content": [
        audio_part(1), {"type": "text", "text": "and"}, image_part(0), video_part([1, 2], [0.0, 1.5], 2.0, 0),
        audio_part(2)]}]
    assert media_order(messages, {"audio", "image"}) == [("audio", 1), ("image", 0), ("image", 1), ("image", 2),
                                                         ("audio", 0), ("audio", 2)]
    assert media_order(messages, {"audio"}) == [("audio", 1), ("audio", 0), ("audio", 2)]
    heard = fill_media_parts(messages, {("image", 0): "a cat", ("image", 1): "a dog", ("image", 2): "a ball"},
                             markers={"audio": "<M>"})[0]["content"]
    assert heard == ("<M>and [Image: a cat] [Video, 2.0 s long. Frames in time order: at 0 s, a dog; at 1.5 s, a "
                     "ball. Its audio track: <M>]<M>")  # a bare marker touches its neighbours
    both = fill_media_parts(messages, {}, markers={"audio": "<M>", "image": "<M>"})[0]["content"]
    assert both.count("<M>") == 6


def test_describe_text_puts_read_text_first():
    labels = [{"label": "domestic cat", "score": 0.81}]
    assert describe_text(labels, []) == "an image showing: domestic cat (81%)"
    assert describe_text(labels, ["Hello", "world"]).startswith('printed text that reads: "Hello world"')


def test_local_paths_stay_inside_the_root(tmp_path: Path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "a.png").write_bytes(b"ok")
    (tmp_path / "secret").write_bytes(b"no")
    os.symlink(tmp_path / "secret", root / "link")
    limits = MediaLimits(local_root=root)
    assert _read_local("a.png", "x", limits) == b"ok"
    assert _read_local(f"file://{root}/a.png", "x", limits) == b"ok"
    assert _read_local(f"file://{root}/a%2Epng", "x", limits) == b"ok"
    answers = set()
    for ref in ("../secret", str(tmp_path / "secret"), "link", "missing", f"file://{root}/../secret", "/etc/passwd"):
        with pytest.raises(InvalidRequest) as exc:
            _read_local(ref, "x", limits)
        answers.add(str(exc.value))
    assert len(answers) == 1
    with pytest.raises(InvalidRequest, match="--allowed-local-media-path"):
        _read_local("a.png", "x", MediaLimits())


def test_pinned_connects_to_the_checked_address():
    limits = MediaLimits()
    url, headers, ext = asyncio.run(_pinned("https://1.1.1.1:8443/a.png?x=1", "x", limits))
    assert url == "https://1.1.1.1:8443/a.png?x=1" and headers == {"host": "1.1.1.1:8443"}
    assert ext == {"sni_hostname": "1.1.1.1"}
    for url in ("http://127.0.0.1/", "http://[::1]/", "http://169.254.169.254/", "http://100.64.0.1/"):
        with pytest.raises(InvalidRequest, match="private or local"):
            asyncio.run(_pinned(url, "x", limits))
    assert asyncio.run(_pinned("http://127.0.0.1/", "x", MediaLimits(allow_private_urls=True)))[0] == "http://127.0.0.1/"
