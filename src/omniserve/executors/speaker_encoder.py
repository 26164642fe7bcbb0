"""Speaker embeddings: who is speaking, as a 256-d unit vector (Resemblyzer's GE2E encoder, ONNX).

The voice library compares them to tell whether a voice sample and a consent recording are one speaker:
the cosine of two clips by one speaker is high, of two speakers low. As Resemblyzer does, a clip is
brought up to -30 dBFS, its long silences are cut, and its mel spectrogram (40 channels, 25 ms windows,
10 ms hops, as librosa computes it) is split into 1.6 s windows, 1.3 a second; the embedding is the
normalized mean of theirs. Resemblyzer finds silence with webrtcvad; we use the windows' energy.
Each step embeds one clip.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import cache

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from omniserve.executors.base import Executor, StepResult
from omniserve.onnx_cpu import cpu_session
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.types import Embeddings, OmniOutput, OmniRequest

RATE = 16000
N_FFT, HOP, MELS = 400, 160, 40  # 25 ms, 10 ms
PARTIAL_FRAMES = 160  # 1.6 s
PARTIALS_PER_SECOND, MIN_COVERAGE = 1.3, 0.75
TARGET_DBFS = -30
VAD_WINDOW = 480  # 30 ms
VAD_AVERAGE, VAD_MAX_SILENCE = 8, 6  # windows
QUIET_DB = 35  # a window this far below the loud ones is silence


class SpeakerEncoderArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str
    threads: int = Field(1, ge=1)


@dataclass
class _Clip:
    request_id: str
    index: int
    audio: np.ndarray
    last: bool


class SpeakerEncoderExecutor(Executor):
    def __init__(self, args: SpeakerEncoderArgs, stage: str = "speaker"):
        super().__init__(args, stage)
        self._clips: deque[_Clip] = deque()

    def load(self) -> StageFacts:
        self._session = cpu_session(self.args.model_path, self.args.threads)
        return StageFacts(model_path=self.args.model_path, dimensions=256, speaker_embeddings=True)

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        last = len(request.audios) - 1
        self._clips.extend(_Clip(request.request_id, i, a, i == last) for i, a in enumerate(request.audios))
        out = [OmniOutput(request.request_id, started=True)]
        if not request.audios:
            out.append(OmniOutput(request.request_id, finish_reason="stop", done=True))
        return out

    def abort(self, request_id: str) -> None:
        self._clips = deque(c for c in self._clips if c.request_id != request_id)

    def has_work(self) -> bool:
        return bool(self._clips)

    def step(self) -> StepResult:
        clip = self._clips.popleft()
        vector = self.embed(clip.audio)
        return self.result([OmniOutput(clip.request_id, finish_reason="stop" if clip.last else None, done=clip.last,
                                       data=Embeddings([clip.index], vector[None]))])

    def close(self) -> None:
        self._clips.clear()

    def embed(self, audio: np.ndarray) -> np.ndarray:
        wav = trim_long_silences(normalize_volume(np.asarray(audio, np.float32)))
        if len(wav) < HOP:
            wav = np.asarray(audio, np.float32)  # all of it quiet: embed it as it is
        slices = partial_slices(len(wav))
        end = slices[-1] * HOP + PARTIAL_FRAMES * HOP
        wav = np.pad(wav, (0, max(0, end - len(wav))))
        mel = mel_spectrogram(wav)
        mels = np.stack([mel[s:s + PARTIAL_FRAMES] for s in slices])
        partials = self._session.run(None, {"mels": mels})[0]
        mean = partials.mean(axis=0)
        return (mean / np.linalg.norm(mean)).astype(np.float32)


def normalize_volume(wav: np.ndarray) -> np.ndarray:
    """Up to TARGET_DBFS, never down (Resemblyzer's increase_only)."""
    rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) if len(wav) else 0.0
    if rms <= 0:
        return wav
    change = TARGET_DBFS - 20 * np.log10(rms)
    return wav * np.float32(10 ** (change / 20)) if change > 0 else wav


def trim_long_silences(wav: np.ndarray) -> np.ndarray:
    """Drop silences longer than VAD_MAX_SILENCE windows, as Resemblyzer does, finding them by energy."""
    wav = wav[:len(wav) - len(wav) % VAD_WINDOW]
    if not len(wav):
        return wav
    windows = wav.reshape(-1, VAD_WINDOW).astype(np.float64)
    db = 10 * np.log10(np.mean(windows ** 2, axis=1) + 1e-12)
    voiced = (db > np.percentile(db, 95) - QUIET_DB).astype(float)
    padded = np.concatenate([np.zeros((VAD_AVERAGE - 1) // 2), voiced, np.zeros(VAD_AVERAGE // 2)])
    average = np.convolve(padded, np.ones(VAD_AVERAGE) / VAD_AVERAGE, "valid")
    mask = np.round(average).astype(bool)
    mask = np.convolve(mask, np.ones(VAD_MAX_SILENCE + 1), "same") > 0  # dilate the voiced runs
    return wav[np.repeat(mask, VAD_WINDOW)]


def partial_slices(samples: int) -> list[int]:
    """The first frame of each 1.6 s window; the last one dropped when the audio covers too little of it."""
    frames = int(np.ceil((samples + 1) / HOP))
    step = int(np.round(RATE / PARTIALS_PER_SECOND / HOP))
    starts = list(range(0, max(1, frames - PARTIAL_FRAMES + step + 1), step))
    coverage = (samples - starts[-1] * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < MIN_COVERAGE and len(starts) > 1:
        starts.pop()
    return starts


def mel_spectrogram(wav: np.ndarray) -> np.ndarray:
    """[frames, 40] power mel spectrogram, as librosa.feature.melspectrogram computes it (centered frames with
    zero padding, a periodic Hann window, Slaney mel filters)."""
    padded = np.pad(wav.astype(np.float32), N_FFT // 2)
    count = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.as_strided(padded, (count, N_FFT), (padded.strides[0] * HOP, padded.strides[0]))
    power = np.abs(np.fft.rfft(frames * _hann(), axis=1)) ** 2
    return (power @ _mel_filters().T).astype(np.float32)


@cache
def _hann() -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's scale: linear to 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    log_part = 15 + np.log(np.maximum(hz, 1e-10) / 1000) / (np.log(6.4) / 27)
    return np.where(hz >= 1000, log_part, hz / (200 / 3))


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return np.where(mel >= 15, 1000 * np.exp(np.log(6.4) / 27 * (mel - 15)), mel * (200 / 3))


@cache
def _mel_filters() -> np.ndarray:
    """[40, 201] triangular filters from 0 to 8 kHz, each scaled to unit area (Slaney's norm)."""
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(RATE / 2), MELS + 2))
    bins = np.linspace(0, RATE / 2, 1 + N_FFT // 2)
    ramps = mel_hz[:, None] - bins[None, :]
    widths = np.diff(mel_hz)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    filters = np.maximum(0, np.minimum(lower, upper))
    return (filters * (2 / (mel_hz[2:] - mel_hz[:-2]))[:, None]).astype(np.float32)
