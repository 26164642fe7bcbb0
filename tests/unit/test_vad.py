"""Turn detection on real speech: the Silero VAD model faster-whisper ships, on LibriVox clips with silence
around them, fed the way a realtime client streams audio."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from omniserve.media.vad import (
    RATE,
    SileroVad,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    TurnSettings,
)
from tests.audio_helpers import librivox_clips


@pytest.fixture(scope="module")
def vad():
    return SileroVad()


def clip(i: int) -> np.ndarray:
    audio, rate = sf.read(librivox_clips()[i][0], dtype="float32")
    assert rate == RATE
    return audio


def silence(ms: int) -> np.ndarray:
    return np.zeros(RATE * ms // 1000, np.float32)


def feed(vad, audio: np.ndarray, chunk_ms: float, settings: TurnSettings = TurnSettings(),
         pauses: bool = False) -> list:
    detector = TurnDetector(vad, settings)
    step = max(1, int(RATE * chunk_ms / 1000))
    events = [event for i in range(0, len(audio), step) for event in detector.feed(audio[i:i + step])]
    return events if pauses else [e for e in events if isinstance(e, SpeechStarted | SpeechStopped)]


def test_silence_and_hiss_are_no_turn(vad):
    hiss = np.random.default_rng(0).normal(0, 0.002, RATE * 3).astype(np.float32)
    assert feed(vad, silence(3000), 20) == [] and feed(vad, hiss, 20) == []


def test_a_spoken_sentence_is_one_turn_with_openai_times(vad):
    speech = clip(0)
    audio = np.concatenate([silence(1000), speech, silence(1500)])
    events = feed(vad, audio, 20)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    start, stop = events[0].audio_start_ms, events[1].audio_end_ms
    assert 1000 - 300 - 64 <= start <= 1000 - 300 + 400  # speech begins near 1 s; 300 ms of padding before it
    end_of_speech = 1000 + len(speech) * 1000 // RATE
    assert end_of_speech - 800 <= stop <= end_of_speech + 500 + 200  # after 500 ms of silence
    unpadded = feed(vad, audio, 20, TurnSettings(prefix_padding_ms=0))
    assert start == unpadded[0].audio_start_ms - 300  # the padding is audio before the speech
    later = feed(vad, audio, 20, TurnSettings(silence_duration_ms=1000))
    assert 400 <= later[1].audio_end_ms - stop <= 600  # the stop waits for the silence it is told to


def test_the_events_do_not_depend_on_how_the_audio_is_cut(vad):
    audio = np.concatenate([silence(700), clip(1), silence(1200)])
    reference = feed(vad, audio, 20)
    assert reference and all(feed(vad, audio, ms) == reference for ms in (7, 100, 1000))


def test_silence_duration_decides_whether_a_pause_ends_the_turn(vad):
    audio = np.concatenate([silence(500), clip(0), silence(800), clip(1), silence(2500)])
    patient = feed(vad, audio, 40, TurnSettings(silence_duration_ms=2000))
    assert [type(e) for e in patient] == [SpeechStarted, SpeechStopped]
    eager = feed(vad, audio, 40, TurnSettings(silence_duration_ms=500))
    assert len(eager) >= 4 and len(eager) % 2 == 0
    assert all(isinstance(e, SpeechStarted if i % 2 == 0 else SpeechStopped) for i, e in enumerate(eager))


def test_a_higher_threshold_hears_less(vad):
    audio = np.concatenate([silence(500), clip(2), silence(1500)])
    default = feed(vad, audio, 20)
    strict = feed(vad, audio, 20, TurnSettings(threshold=0.999))
    assert default and (not strict or strict[0].audio_start_ms >= default[0].audio_start_ms)


def test_a_pause_comes_before_each_stop_and_speech_going_on_resumes_it(vad):
    audio = np.concatenate([silence(500), clip(0), silence(800), clip(1), silence(2500)])
    events = feed(vad, audio, 20, TurnSettings(silence_duration_ms=2000), pauses=True)
    kinds = [type(e) for e in events]
    assert kinds[0] is SpeechStarted and kinds[-2:] == [SpeechPaused, SpeechStopped]
    # every pause is followed by a resumption or the stop, and nothing comes between a resumption and its pause
    for i, kind in enumerate(kinds):
        if kind is SpeechPaused:
            assert kinds[i + 1] in (SpeechResumed, SpeechStopped)
        if kind is SpeechResumed:
            assert kinds[i - 1] is SpeechPaused
    assert SpeechResumed in kinds  # the 800 ms between the sentences is a pause that the second one resumes
