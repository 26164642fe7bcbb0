"""Pure logic of image generation: prompt -> category, sizes, quality presets, the URL store."""

from __future__ import annotations

import os
import time

import pytest

from omniserve.api.protocol.images import parse_size
from omniserve.media.image_out import ImageStore, encoding_quality
from omniserve.models.sketch_rnn import SketchRnn
from tests.conftest import shared_models


@pytest.fixture(scope="module")
def sketches():
    return SketchRnn(shared_models() / "sketch-rnn-quickdraw")


@pytest.mark.parametrize("prompt, category", [
    ("a dog", "dog"), ("Two DOGS playing", "dog"), ("my bike", "bicycle"), ("a palm tree at dusk", "palm_tree"),
    ("a rhino", "rhinoceros"), ("a parrot next to a dog", "parrot"), ("the roller coaster", "roller_coaster"),
    ("a boat", None), ("doghouse", None), ("", None),
])
def test_prompt_to_category(sketches, prompt, category):
    assert sketches.match(prompt) == category


def test_prompt_to_category_by_meaning():
    from omniserve.models.minilm import MiniLm

    sketches = SketchRnn(shared_models() / "sketch-rnn-quickdraw", MiniLm().embed)
    assert [sketches.match(p) for p in ("a canine", "a crustacean", "an emergency vehicle", "a musical instrument")
            ] == ["dog", "lobster", "ambulance", "trombone"]
    assert [sketches.match(p) for p in ("a sailing boat", "Draw a boat", "a car", "the stock market", "please draw")
            ] == [None] * 5
    assert sketches.match("a canine next to a sheep") == "sheep"  # a named category wins over meaning
    # not strict: the nearest category, however far
    assert all(sketches.match(p, strict=False) in sketches.categories for p in ("a car", "please draw", "?"))


def test_parse_size():
    assert parse_size("256x128") == (256, 128) and parse_size("auto") == (512, 512) and parse_size(None) == (512, 512)
    for bad in ("256", "0x10", "99999x2", "ax b"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_quality_presets():
    assert [encoding_quality(q, None) for q in ("maximum", "high", "medium", "low", None)] == [100, 90, 55, 35, 75]
    assert encoding_quality("low", 80) == 80


def test_store_expires(tmp_path):
    store = ImageStore(tmp_path, ttl_s=60)
    image_id = store.save(b"png", "png")
    file, media_type = store.open(image_id)
    with file:
        assert file.read() == b"png" and media_type == "image/png"
    old = time.time() - 120
    os.utime(tmp_path / f"{image_id}.png", (old, old))
    assert store.open(image_id) is None
    store.save(b"x", "webp")  # saving purges what expired
    assert not (tmp_path / f"{image_id}.png").exists()
    assert store.open("../etc/passwd") is None and store.open("img_../../x") is None


def test_the_image_store_serves_an_open_file_after_it_is_removed(tmp_path):
    store = ImageStore(tmp_path, ttl_s=60)
    image_id = store.save(b"x" * 300_000, "png")
    file, _ = store.open(image_id)
    (tmp_path / f"{image_id}.png").unlink()  # a purge or an expiry meanwhile
    with file:
        assert len(file.read()) == 300_000
    assert store.open(image_id) is None


@pytest.mark.parametrize("body, seconds, frames", [
    ({}, "4", 32), ({"num_frames": 9}, "1.125", 9), ({"num_frames": 9, "seconds": "2"}, "2", 9),
    ({"extra_body": {"num_frames": 12, "fps": 24}}, "0.5", 12), ({"seconds": 1.5, "fps": 10}, "1.5", 15),
])
def test_video_length_from_seconds_or_frames(body, seconds, frames):
    from omniserve.api.protocol.videos import VideoRequest

    request = VideoRequest(prompt="a cat", **body)
    assert (request.seconds, request.frames()) == (seconds, frames)
