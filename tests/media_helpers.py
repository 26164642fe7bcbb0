"""Shared pieces of the image and video tests: real photos, data URLs, and videos made with PyAV."""

from __future__ import annotations

import base64
import functools
import importlib.util
import io
from pathlib import Path

import av
import numpy as np
import soundfile as sf
from PIL import Image

from tests.audio_helpers import LIBRIVOX
from tests.conftest import wait_until

SPOKEN = LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav"  # "he was not an ill disposed young man"


def skimage_photo(name: str) -> Path:
    """A photo from the scikit-image wheel (chelsea.png is a cat, page.png printed text)."""
    spec = importlib.util.find_spec("skimage")
    assert spec is not None, "scikit-image is a test dependency (pip install -e .[test])"
    return Path(next(iter(spec.submodule_search_locations))) / "data" / name


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_bytes(size=(8, 8), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def photo_url(name: str) -> str:
    path = skimage_photo(name)
    return data_url(path.read_bytes(), "image/jpeg" if path.suffix == ".jpg" else "image/png")


def rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(skimage_photo(name)).convert("RGB"))


def make_video(scenes: list[tuple[np.ndarray, float]], fps: int = 10, audio: np.ndarray | None = None,
               audio_rate: int = 16000) -> bytes:
    """An H.264 mp4 showing each (image, seconds) scene in turn, with an AAC track of `audio` (float, mono)."""
    sink = io.BytesIO()
    height, width = (min(s[0].shape[i] for s in scenes) // 2 * 2 for i in (0, 1))
    with av.open(sink, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("aac", rate=audio_rate, layout="mono") if audio is not None else None
        for image, seconds in scenes:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:height, :width]), format="rgb24")
            for _ in range(round(seconds * fps)):
                container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            pcm = av.AudioFrame.from_ndarray(audio.astype(np.float32)[None], format="flt", layout="mono")
            pcm.sample_rate = audio_rate
            resampler = av.AudioResampler(format=sound.codec_context.format.name, layout="mono", rate=audio_rate)
            for out in resampler.resample(pcm) + resampler.resample(None):
                container.mux(sound.encode(out))
            container.mux(sound.encode(None))
    return sink.getvalue()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url, "detail": "auto"}}


def video_part(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


@functools.cache
def cat_video(with_sound: bool = True) -> bytes:
    """4 s: the cat for 2 s, then coffee for 2 s; the sound is a LibriVox sentence."""
    audio, rate = sf.read(SPOKEN, dtype="float32")
    return make_video([(rgb("chelsea.png"), 2.0), (rgb("coffee.png"), 2.0)], audio=audio if with_sound else None,
                      audio_rate=rate)


def video_frames(data: bytes) -> list[np.ndarray]:
    """The frames of an mp4, RGB."""
    with av.open(io.BytesIO(data)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]


def finished(videos, video_id, timeout=60):
    """The video job once it is completed or failed (`client.videos`)."""
    return wait_until(lambda: (v := videos.retrieve(video_id)).status in ("completed", "failed") and v, timeout)
