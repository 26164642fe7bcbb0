"""Videos in and out. In: frames sampled at a fixed rate with their timestamps, and the
audio track. Out: frames encoded to an H.264 mp4 as they arrive (`VideoEncoder`).

PyAV decodes the first video stream. A frame is kept when its presentation
time reaches the next sampling point (every `1/fps` seconds from the start),
so the kept frames are evenly spaced in time whatever the file's own frame
rate; when that would give more than `max_frames`, the rate is lowered to
spread `max_frames` over the whole video. The audio track, if any, decodes
with the same code as any audio input (`media.audio.decode_audio`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np

from omniserve.errors import InvalidRequest
from omniserve.media.audio import decode_audio

INPUT_FORMATS = ("mp4", "webm", "mkv", "mov", "avi", "gif")


@dataclass
class VideoClip:
    frames: list[np.ndarray]  # (H, W, 3) uint8
    timestamps: list[float]  # seconds from the start, one per frame
    duration: float
    audio: np.ndarray | None = None  # 16 kHz mono float32


def decode_video(data: bytes, *, where: str, fps: float, max_frames: int, max_seconds: float, max_pixels: int,
                 with_audio: bool, max_audio_seconds: float) -> VideoClip:
    formats = ", ".join(INPUT_FORMATS)
    if not data:
        raise InvalidRequest(f"{where}: the video is empty; send one of: {formats}", param=where)
    try:
        with av.open(io.BytesIO(data), metadata_errors="ignore") as container:
            if not container.streams.video:
                raise InvalidRequest(f"{where}: the file has no video stream; send one of: {formats}", param=where)
            stream = container.streams.video[0]
            if stream.width * stream.height > max_pixels:
                raise InvalidRequest(
                    f"{where}: the video is {stream.width}x{stream.height}, over the limit of {max_pixels} pixels "
                    "per frame (--max-image-pixels)", param=where)
            duration = _duration(container, stream)
            if duration > max_seconds:
                raise InvalidRequest(f"{where}: the video is {duration:.1f} s long, over the limit of "
                                     f"{max_seconds:g} s (--max-video-seconds)", param=where)
            has_audio = bool(container.streams.audio)
            step = 1.0 / fps
            if duration > 0 and duration * fps > max_frames:
                step = duration / max_frames
            frames, timestamps = _sample(container, stream, step, max_frames, max_seconds, where)
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise InvalidRequest(f"{where}: could not decode the video ({exc}); send one of: {formats}",
                             param=where) from None
    if not frames:
        raise InvalidRequest(f"{where}: the video holds no frames; send one of: {formats}", param=where)
    audio = None
    if with_audio and has_audio:
        audio = decode_audio(data, where=f"{where} (audio track)", max_seconds=max_audio_seconds)
    return VideoClip(frames, timestamps, max(duration, timestamps[-1]), audio)


def _duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0  # unknown (a live-style stream): the frame limit still bounds the work


def _sample(container, stream, step: float, max_frames: int, max_seconds: float,
            where: str) -> tuple[list[np.ndarray], list[float]]:
    frames: list[np.ndarray] = []
    timestamps: list[float] = []
    start: float | None = None
    next_at = 0.0
    for frame in container.decode(stream):
        if frame.time is None:
            continue
        start = frame.time if start is None else start
        t = frame.time - start
        if t > max_seconds:
            raise InvalidRequest(f"{where}: the video runs past the limit of {max_seconds:g} s "
                                 "(--max-video-seconds)", param=where)
        if t + 1e-6 < next_at:
            continue
        frames.append(frame.to_ndarray(format="rgb24"))
        timestamps.append(round(t, 3))
        next_at = (int(t / step + 1e-6) + 1) * step
        if len(frames) >= max_frames:
            break
    return frames, timestamps


def crf_for_quality(quality: int) -> int:
    """0-100 quality (100 best) -> x264's constant rate factor (51 worst .. 10 near lossless)."""
    return round(51 - quality * 0.41)


class VideoEncoder:
    """RGB frames -> an H.264 (yuv420p) mp4 file. FFmpeg muxes into memory and the file is written whole at
    `close`: FFmpeg writing the file itself crashed the process (a segfault in its trailer) once a write had
    met a full disk, while a write from Python is an OSError like any other."""

    def __init__(self, path: str, fps: int, width: int, height: int, quality: int = 50):
        self._path = path
        self._buffer = io.BytesIO()
        self._container = av.open(self._buffer, "w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=fps, options={"crf": str(crf_for_quality(quality)),
                                                                              "preset": "veryfast"})
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self.frames = 0

    def write(self, frames: np.ndarray) -> None:
        for pixels in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels[..., :3]), format="rgb24")
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames += 1

    def close(self) -> None:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        with open(self._path, "wb") as f:
            f.write(self._buffer.getbuffer())
