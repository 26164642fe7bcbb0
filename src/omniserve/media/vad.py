"""Turn detection for spoken conversations (the Realtime API's `server_vad`): Silero VAD, the ONNX model
that faster-whisper ships (onnxruntime, no torch), run on 32 ms windows of 16 kHz audio as it streams in.

A turn starts at the first window whose speech probability reaches `threshold`, and ends once
`silence_duration_ms` of windows have stayed below a lower threshold (Silero's own hysteresis,
`threshold - 0.15`). The times are OpenAI's: `audio_start_ms` is where speech began minus
`prefix_padding_ms` (the audio the model hears first), `audio_end_ms` is where the silence that
ended the turn ran out. Feeding the same audio in any chunk sizes gives the same events.

Between them, a pause (`PAUSE_MS` of quiet, while the silence that would end the turn is still running out)
and speech resuming are events too: a listener may start work on what was said so far, and drop it if the
speaker goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniserve.onnx_cpu import cpu_session

RATE = 16000
WINDOW = 512  # samples a call scores (32 ms)
CONTEXT = 64  # samples of the previous window each call also sees
HYSTERESIS = 0.15  # speech goes on until the probability falls this far below the threshold
PAUSE_MS = 160  # quiet this long within a turn is a pause (words are usually closer)


@dataclass(frozen=True)
class TurnSettings:
    """OpenAI's server_vad settings, with its defaults."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int


@dataclass(frozen=True)
class SpeechPaused:
    """The speaker has been quiet for PAUSE_MS; the turn ends if the quiet lasts."""


@dataclass(frozen=True)
class SpeechResumed:
    """The speaker went on after a pause."""


TurnEvent = SpeechStarted | SpeechStopped | SpeechPaused | SpeechResumed


class SileroVad:
    """The model: one onnxruntime session (one thread), shared by every stream that scores with it."""

    def __init__(self, path: Path | None = None):

        if path is None:
            from faster_whisper.utils import get_assets_path

            path = Path(get_assets_path()) / "silero_vad_v6.onnx"
        self.session = cpu_session(path, quiet=True)

    def stream(self) -> VadStream:
        return VadStream(self)


class VadStream:
    """One audio stream's speech probabilities, window by window (the model's state carried along)."""

    def __init__(self, vad: SileroVad):
        self.vad = vad
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)

    def feed(self, samples: np.ndarray) -> list[float]:
        """Mono float32 samples at 16 kHz; the probability of each window they complete."""
        self._pending = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        probabilities = []
        while len(self._pending) >= WINDOW:
            window, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
            out, self._h, self._c = self.vad.session.run(
                None, {"input": np.concatenate([self._context, window])[None], "h": self._h, "c": self._c})
            self._context = window[-CONTEXT:]
            probabilities.append(float(np.asarray(out).reshape(-1)[0]))
        return probabilities


class TurnDetector:
    """Speech started and stopped, from the audio of one conversation as it arrives."""

    def __init__(self, vad: SileroVad, settings: TurnSettings = TurnSettings()):
        self.settings = settings
        self._stream = vad.stream()
        self._windows = 0  # windows scored so far
        self.speaking = False
        self._quiet = 0  # windows below the lower threshold since speech last was heard

    def feed(self, samples: np.ndarray) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        s = self.settings
        silence_windows = max(1, round(s.silence_duration_ms * RATE / 1000 / WINDOW))
        pause_windows = round(PAUSE_MS * RATE / 1000 / WINDOW)
        for probability in self._stream.feed(samples):
            start_ms = self._windows * WINDOW * 1000 // RATE
            self._windows += 1
            if not self.speaking:
                if probability >= s.threshold:
                    self.speaking, self._quiet = True, 0
                    events.append(SpeechStarted(max(0, start_ms - s.prefix_padding_ms)))
            elif probability < s.threshold - HYSTERESIS:
                self._quiet += 1
                if self._quiet >= silence_windows:
                    self.speaking = False
                    events.append(SpeechStopped(self._windows * WINDOW * 1000 // RATE))
                elif self._quiet == pause_windows:
                    events.append(SpeechPaused())
            else:
                if self._quiet >= pause_windows:
                    events.append(SpeechResumed())
                self._quiet = 0
        return events
