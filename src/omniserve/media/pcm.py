"""Raw audio streams as the Realtime API sends and receives them: 16-bit PCM at 24 kHz (its default),
or G.711 μ-law / A-law at 8 kHz, in chunks of any size. `PcmReader` turns them into mono float32
at 16 kHz for turn detection and speech to text; `PcmWriter` turns 16-bit PCM from a TTS at its own
rate into the stream's format. Resampling is PyAV's (libswresample), which keeps its filter state
across chunks, so a stream cut anywhere resamples as one piece."""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

ASR_RATE = 16000


@dataclass(frozen=True)
class PcmFormat:
    """One of the Realtime API's audio formats."""

    name: str  # GA type: audio/pcm, audio/pcmu, audio/pcma
    rate: int
    codec: str  # pcm16, ulaw, alaw

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.codec == "pcm16" else 1


PCM16 = PcmFormat("audio/pcm", 24000, "pcm16")
PCMU = PcmFormat("audio/pcmu", 8000, "ulaw")
PCMA = PcmFormat("audio/pcma", 8000, "alaw")
# GA names, and the beta ones clients still send
FORMATS = {"audio/pcm": PCM16, "audio/pcmu": PCMU, "audio/pcma": PCMA,
           "pcm16": PCM16, "g711_ulaw": PCMU, "g711_alaw": PCMA}


# ---- G.711 (ITU-T), vectorised -------------------------------------------------------------------

def _ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a & 0x70) >> 4
    mantissa = (a & 0x0F) << 4
    magnitude = np.where(exponent == 0, mantissa + 8, (mantissa + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


ULAW_TO_PCM = _ulaw_decode_table()
ALAW_TO_PCM = _alaw_decode_table()


_ULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """16-bit samples -> μ-law bytes (on 14 bits, as ITU-T G.711 and Sun's reference code)."""
    x = pcm.astype(np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    x = np.minimum(np.abs(x), 8159) + (0x84 >> 2)
    segment = np.searchsorted(_ULAW_SEGMENT_ENDS, x)
    code = np.where(segment >= 8, 0x7F, (segment << 4) | ((x >> (np.minimum(segment, 7) + 1)) & 0x0F))
    return ((code ^ mask) & 0xFF).astype(np.uint8).tobytes()


def alaw_encode(pcm: np.ndarray) -> bytes:
    """16-bit samples -> A-law bytes (on 13 bits)."""
    x = pcm.astype(np.int32) >> 3
    mask = np.where(x >= 0, 0xD5, 0x55)
    x = np.where(x >= 0, x, -x - 1)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, x)
    shift = np.where(segment < 2, 1, np.minimum(segment, 7))
    code = np.where(segment >= 8, 0x7F, (segment << 4) | ((x >> shift) & 0x0F))
    return ((code ^ mask) & 0xFF).astype(np.uint8).tobytes()


def to_pcm16(data: bytes, fmt: PcmFormat) -> np.ndarray:
    """The 16-bit samples of a chunk in `fmt` (a pcm16 chunk must hold whole samples)."""
    if fmt.codec == "ulaw":
        return ULAW_TO_PCM[np.frombuffer(data, np.uint8)]
    if fmt.codec == "alaw":
        return ALAW_TO_PCM[np.frombuffer(data, np.uint8)]
    return np.frombuffer(data, "<i2")


def from_pcm16(pcm: np.ndarray, fmt: PcmFormat) -> bytes:
    if fmt.codec == "ulaw":
        return ulaw_encode(pcm)
    if fmt.codec == "alaw":
        return alaw_encode(pcm)
    return pcm.astype("<i2").tobytes()


# ---- streams -------------------------------------------------------------------------------------

class Resampler:
    """16-bit mono from one rate to another, chunk by chunk."""

    def __init__(self, source: int, target: int, out_format: str):
        self.source = source
        self._resampler = av.AudioResampler(format=out_format, layout="mono", rate=target)
        self._pts = 0

    def __call__(self, pcm: np.ndarray | None) -> np.ndarray:
        frame = None
        if pcm is not None:
            if not len(pcm):
                return np.zeros(0, np.float32)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1), format="s16",
                                               layout="mono")
            frame.sample_rate, frame.pts = self.source, self._pts
            self._pts += len(pcm)
        parts = [out.to_ndarray().reshape(-1) for out in self._resampler.resample(frame)]
        return np.concatenate(parts) if parts else np.zeros(0)


class PcmReader:
    """A client's audio in its format -> mono float32 at 16 kHz, as it streams in."""

    def __init__(self, fmt: PcmFormat):
        self.format = fmt
        self._resample = Resampler(fmt.rate, ASR_RATE, "flt")
        self._odd = b""  # a pcm16 byte split across chunks

    def read(self, data: bytes) -> np.ndarray:
        if self.format.codec == "pcm16":
            data, self._odd = self._odd + data, b""
            if len(data) % 2:
                data, self._odd = data[:-1], data[-1:]
        return self._resample(to_pcm16(data, self.format)).astype(np.float32, copy=False)


class PcmWriter:
    """16-bit PCM at `rate` (a TTS's) -> the client's format, as it streams out."""

    def __init__(self, fmt: PcmFormat, rate: int):
        self.format = fmt
        self._resample = Resampler(rate, fmt.rate, "s16") if rate != fmt.rate else None

    def write(self, pcm16: bytes) -> bytes:
        samples = np.frombuffer(pcm16, "<i2")
        return from_pcm16(self._resample(samples) if self._resample else samples, self.format)

    def flush(self) -> bytes:
        """What the resampler still holds, at the end of an answer."""
        return from_pcm16(self._resample(None), self.format) if self._resample else b""
