"""Realtime audio formats: G.711 equals the standard library's reference (audioop, in Python 3.11), and
streams resample the same however they are cut."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from omniserve.media.pcm import (
    ALAW_TO_PCM,
    PCM16,
    PCMA,
    PCMU,
    ULAW_TO_PCM,
    PcmReader,
    PcmWriter,
    alaw_encode,
    ulaw_encode,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

EVERY_SAMPLE = np.arange(-32768, 32768, dtype=np.int16)


def test_ulaw_equals_the_reference_for_every_sample_and_code():
    assert ulaw_encode(EVERY_SAMPLE) == audioop.lin2ulaw(EVERY_SAMPLE.tobytes(), 2)
    codes = bytes(range(256))
    assert ULAW_TO_PCM[np.frombuffer(codes, np.uint8)].tobytes() == audioop.ulaw2lin(codes, 2)


def test_alaw_equals_the_reference_for_every_sample_and_code():
    assert alaw_encode(EVERY_SAMPLE) == audioop.lin2alaw(EVERY_SAMPLE.tobytes(), 2)
    codes = bytes(range(256))
    assert ALAW_TO_PCM[np.frombuffer(codes, np.uint8)].tobytes() == audioop.alaw2lin(codes, 2)


def tone(rate: int, seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * hz * t) * 12000).astype(np.int16)


@pytest.mark.parametrize("fmt", [PCM16, PCMU, PCMA])
def test_a_stream_in_reads_as_16khz_whatever_its_chunks(fmt):
    data = PcmWriter(fmt, fmt.rate).write(tone(fmt.rate, 1.0).tobytes())
    whole = PcmReader(fmt).read(data)
    reader = PcmReader(fmt)
    cut = np.concatenate([reader.read(data[i:i + 777]) for i in range(0, len(data), 777)])  # odd: splits samples
    assert np.array_equal(whole, cut)
    assert abs(len(whole) - 16000) < 400 and whole.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(whole[2000:14000]))
    assert abs(np.argmax(spectrum) * 16000 / 12000 - 440) < 5  # still a 440 Hz tone


def test_tts_audio_goes_out_at_the_client_rate():
    writer = PcmWriter(PCM16, 22050)
    source = tone(22050, 1.0).tobytes()
    out = b"".join(writer.write(source[i:i + 4410]) for i in range(0, len(source), 4410)) + writer.flush()
    samples = np.frombuffer(out, "<i2")
    assert abs(len(samples) - 24000) < 50
    spectrum = np.abs(np.fft.rfft(samples[2000:22000].astype(np.float32)))
    assert abs(np.argmax(spectrum) * 24000 / 20000 - 440) < 5
