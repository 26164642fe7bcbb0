"""Shared pieces of the speech tests: real LibriVox clips, WER, and decoding what the server returns."""

from __future__ import annotations

import io
import re
from pathlib import Path

import av
import jiwer
import numpy as np

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def librivox_clips() -> list[tuple[Path, str]]:
    """(wav, reference transcript) from Debian's pocketsphinx-testdata (installed by scripts/test.sh)."""
    assert (LIBRIVOX / "transcription").exists(), "install Debian's pocketsphinx-testdata (scripts/test.sh does)"
    clips = []
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        match = re.match(r"<s>(.*)</s>\s*\((.+)\)", line.strip())
        if match:
            clips.append((LIBRIVOX / f"{match.group(2)}.wav", match.group(1).strip()))
    return clips


def normalize(text: str) -> str:
    text = text.lower().replace("mr.", "mister").replace("-", " ")
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text).split())


def wer(references: list[str], hypotheses: list[str]) -> float:
    return jiwer.wer([normalize(r) for r in references], [normalize(h) for h in hypotheses])


def decode(data: bytes) -> tuple[int, float, np.ndarray]:
    """(sample rate, seconds, mono samples) of an encoded audio file."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray().reshape(f.samples, -1)[:, 0] if f.format.is_packed else f.to_ndarray()[0]
                  for f in container.decode(stream)]
        rate = stream.rate
    samples = np.concatenate(frames) if frames else np.zeros(0)
    return rate, len(samples) / rate, samples
