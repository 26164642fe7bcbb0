"""Audio in and out: decode any container PyAV reads into 16 kHz mono float32,
and encode 16-bit mono PCM into the format a client asked for.

One encoder serves whole responses and streams alike: `AudioEncoder.write`
returns the bytes that are ready so far, so a streamed body can start with
the first sentence. A format we cannot produce is an error, never a
silent fallback to another one.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass

import av
import numpy as np

from omniserve.errors import InvalidRequest

ASR_RATE = 16000

# What the decoder is known to read (the OpenAI list; PyAV/FFmpeg reads many more).
INPUT_FORMATS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "opus", "wav", "webm", "aac")


@dataclass(frozen=True)
class OutputFormat:
    container: str | None  # None: raw PCM, no container
    codec: str | None
    media_type: str
    rates: tuple[int, ...] = ()  # the codec's rates, if it is picky


OUTPUT_FORMATS: dict[str, OutputFormat] = {
    "mp3": OutputFormat("mp3", "libmp3lame", "audio/mpeg"),
    "opus": OutputFormat("ogg", "libopus", "audio/ogg", (48000, 24000, 16000, 12000, 8000)),
    "aac": OutputFormat("adts", "aac", "audio/aac"),
    "flac": OutputFormat("flac", "flac", "audio/flac"),
    "wav": OutputFormat("wav", "pcm_s16le", "audio/wav"),
    "pcm": OutputFormat(None, None, "audio/pcm"),
}


def output_format(name: str, param: str) -> OutputFormat:
    fmt = OUTPUT_FORMATS.get(name)
    if fmt is None:
        raise InvalidRequest(f"{param}: unsupported audio format {name!r}; use one of {', '.join(OUTPUT_FORMATS)}",
                             param=param)
    return fmt


def decode_audio(data: bytes, *, where: str, max_seconds: float, rate: int = ASR_RATE) -> np.ndarray:
    """Any audio file -> mono float32 at `rate` (16 kHz, what speech to text takes). Bad input is a 400 naming
    `where`."""
    formats = ", ".join(INPUT_FORMATS)
    if not data:
        raise InvalidRequest(f"{where}: the audio is empty; send a file in one of: {formats}", param=where)
    max_samples = int(max_seconds * rate)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise InvalidRequest(f"{where}: the file has no audio stream; send one of: {formats}", param=where)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            stream = container.streams.audio[0]
            for frame in itertools.chain(container.decode(stream), [None]):
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1)
                    chunks.append(samples)
                    total += samples.size
                if total > max_samples:
                    raise InvalidRequest(
                        f"{where}: the audio is longer than the limit of {max_seconds:g} seconds "
                        "(--max-audio-seconds)", param=where)
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise InvalidRequest(
            f"{where}: could not decode the audio ({exc}); send a file in one of: {formats}", param=where
        ) from None
    if total == 0:
        raise InvalidRequest(f"{where}: the file holds no audio samples; send one of: {formats}", param=where)
    return np.concatenate(chunks).astype(np.float32, copy=False)


class _Sink:
    """A write-only file for PyAV: whatever the muxer has written, handed out on demand."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


class AudioEncoder:
    """16-bit mono PCM in, `fmt` bytes out, incrementally."""

    def __init__(self, fmt: str, sample_rate: int):
        self.format = output_format(fmt, "response_format")
        self.sample_rate = sample_rate
        self._container = None
        if self.format.container is None:
            return
        self._sink = _Sink()
        self._container = av.open(self._sink, "w", format=self.format.container)
        rate = sample_rate
        if self.format.rates and rate not in self.format.rates:
            rate = min((r for r in self.format.rates if r >= rate), default=max(self.format.rates))
        self._stream = self._container.add_stream(self.format.codec, rate=rate, layout="mono")
        ctx = self._stream.codec_context
        self._resampler = av.AudioResampler(format=ctx.format.name, layout="mono", rate=ctx.sample_rate)

    def write(self, pcm: bytes) -> bytes:
        if self._container is None:
            return pcm
        if not pcm:
            return b""
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, np.int16).reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate = self.sample_rate
        self._encode(self._resampler.resample(frame))
        return self._sink.take()

    def close(self) -> bytes:
        if self._container is None:
            return b""
        self._encode(self._resampler.resample(None))
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._container = None
        return self._sink.take()

    def _encode(self, frames) -> None:
        for frame in frames:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)


def encode_audio(pcm: bytes, sample_rate: int, fmt: str) -> bytes:
    encoder = AudioEncoder(fmt, sample_rate)
    return encoder.write(pcm) + encoder.close()
