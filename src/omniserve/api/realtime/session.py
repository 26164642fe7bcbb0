"""One realtime conversation's state: its settings, its input audio buffer and server-side turn detection.

Audio arrives as base64 chunks in the session's input format and is kept as mono float32 at 16 kHz
(what turn detection and speech to text take). With `server_vad`, speech starting and stopping are
events, and a stop commits the buffer as a user item; without it, the client commits. Times are in
milliseconds of all the audio the session was sent, as at OpenAI."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field

import numpy as np

from omniserve.api.realtime.protocol import (
    AudioInputOut,
    AudioOut,
    AudioOutputOut,
    ClearedEvent,
    ClientEvent,
    CommittedEvent,
    FormatOut,
    InputAudioAppend,
    InputAudioClear,
    InputAudioCommit,
    RealtimeError,
    ServerEvent,
    SessionEvent,
    SessionOut,
    SessionSpec,
    SessionUpdate,
    SpeechStartedEvent,
    SpeechStoppedEvent,
    TurnDetectionOut,
    TurnDetectionSpec,
    audio_format,
)
from omniserve.media.pcm import ASR_RATE, PCM16, PcmFormat, PcmReader
from omniserve.media.vad import SileroVad, SpeechStarted, TurnDetector, TurnSettings

MAX_APPEND_BYTES = 15 * 1024 * 1024  # one input_audio_buffer.append, as at OpenAI
MIN_COMMIT_MS = 100  # a shorter buffer is nothing to answer


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


@dataclass
class SessionSettings:
    voice: str
    instructions: str = ""
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    input_format: PcmFormat = PCM16
    output_format: PcmFormat = PCM16
    turn_detection: TurnDetectionSpec | None = field(default_factory=TurnDetectionSpec)
    temperature: float | None = None
    max_output_tokens: int | str = "inf"


@dataclass
class UserAudio:
    """A committed stretch of the user's speech: a conversation item waiting to be heard."""

    item_id: str
    samples: np.ndarray  # mono float32 at 16 kHz


class RealtimeSession:
    def __init__(self, model: str, voice: str, vad: SileroVad):
        self.id = new_id("sess")
        self.model = model
        self.settings = SessionSettings(voice=voice)
        self.items: list[UserAudio] = []
        self._vad = vad
        self._written_ms = 0.0  # all input audio so far
        self._reader = PcmReader(self.settings.input_format)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0  # samples at 16 kHz
        self._pending_item = new_id("item")  # the id the buffer's item will take
        self._detector: TurnDetector | None = None
        self._detector_origin_ms = 0.0
        self._restart_detector()

    # ---- events --------------------------------------------------------------------------------

    def created(self) -> SessionEvent:
        return SessionEvent(type="session.created", session=self.describe())

    def handle(self, event: ClientEvent) -> list[ServerEvent]:
        match event:
            case SessionUpdate(session=spec):
                self._update(spec)
                return [SessionEvent(type="session.updated", session=self.describe())]
            case InputAudioAppend(audio=audio):
                return self._append(audio, event.event_id)
            case InputAudioCommit():
                return self._commit(event.event_id)
            case InputAudioClear():
                self._reset_buffer()
                self._restart_detector()
                return [ClearedEvent()]
        raise RealtimeError(f"{event.type} is not handled yet", event_id=event.event_id)

    def describe(self) -> SessionOut:
        s = self.settings
        turn = s.turn_detection
        return SessionOut(
            id=self.id, model=self.model, output_modalities=s.output_modalities, instructions=s.instructions,
            temperature=s.temperature, max_output_tokens=s.max_output_tokens,
            audio=AudioOut(
                input=AudioInputOut(format=FormatOut(type=s.input_format.name, rate=s.input_format.rate),
                                    turn_detection=TurnDetectionOut(**turn.model_dump()) if turn else None),
                output=AudioOutputOut(format=FormatOut(type=s.output_format.name, rate=s.output_format.rate),
                                      voice=s.voice)))

    # ---- settings ------------------------------------------------------------------------------

    def _update(self, spec: SessionSpec) -> None:
        s = self.settings
        fields = spec.model_fields_set
        audio_in = spec.audio.input if spec.audio else None
        audio_out = spec.audio.output if spec.audio else None
        if spec.instructions is not None:
            s.instructions = spec.instructions
        modalities = spec.output_modalities or spec.modalities
        if modalities:
            s.output_modalities = list(dict.fromkeys(modalities))
        voice = (audio_out.voice if audio_out else None) or spec.voice
        if voice:
            s.voice = voice
        input_format = (audio_in.format if audio_in else None) or spec.input_audio_format
        if input_format is not None and audio_format(input_format) != s.input_format:
            s.input_format = audio_format(input_format)
            self._reader = PcmReader(s.input_format)
        output_format = (audio_out.format if audio_out else None) or spec.output_audio_format
        if output_format is not None:
            s.output_format = audio_format(output_format)
        if audio_in is not None and "turn_detection" in audio_in.model_fields_set:
            s.turn_detection = audio_in.turn_detection
            self._restart_detector()
        elif "turn_detection" in fields:
            s.turn_detection = spec.turn_detection
            self._restart_detector()
        if spec.temperature is not None:
            s.temperature = spec.temperature
        tokens = spec.max_output_tokens if spec.max_output_tokens is not None else spec.max_response_output_tokens
        if tokens is not None:
            s.max_output_tokens = tokens

    def _restart_detector(self) -> None:
        turn = self.settings.turn_detection
        self._detector = None if turn is None else TurnDetector(self._vad, TurnSettings(
            turn.threshold, turn.prefix_padding_ms, turn.silence_duration_ms))
        self._detector_origin_ms = self._written_ms

    # ---- the input audio buffer ------------------------------------------------------------------

    def _append(self, audio: str, event_id: str | None) -> list[ServerEvent]:
        if len(audio) > MAX_APPEND_BYTES * 4 // 3 + 4:
            raise RealtimeError(f"input_audio_buffer.append: the audio is larger than {MAX_APPEND_BYTES} bytes; "
                                "send it in smaller chunks", code="audio_too_large", param="audio", event_id=event_id)
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("input_audio_buffer.append: `audio` is not valid base64", code="invalid_base64",
                                param="audio", event_id=event_id) from None
        fmt = self.settings.input_format
        if fmt.codec == "pcm16" and len(data) % 2:
            raise RealtimeError(f"input_audio_buffer.append: {fmt.name} audio is 16-bit samples, an even number "
                                f"of bytes; got {len(data)}", code="invalid_audio_format", param="audio",
                                event_id=event_id)
        samples = self._reader.read(data)
        self._written_ms += len(data) / fmt.bytes_per_sample * 1000 / fmt.rate
        self._buffer.append(samples)
        self._buffered += len(samples)
        events: list[ServerEvent] = []
        for turn in self._detector.feed(samples) if self._detector else []:
            if isinstance(turn, SpeechStarted):
                events.append(SpeechStartedEvent(audio_start_ms=round(self._detector_origin_ms + turn.audio_start_ms),
                                                 item_id=self._pending_item))
            else:
                events.append(SpeechStoppedEvent(audio_end_ms=round(self._detector_origin_ms + turn.audio_end_ms),
                                                 item_id=self._pending_item))
                events += self._commit(None)
        return events

    def _commit(self, event_id: str | None) -> list[ServerEvent]:
        if self._buffered * 1000 < MIN_COMMIT_MS * ASR_RATE:
            raise RealtimeError(f"input_audio_buffer.commit: the buffer holds {self._buffered * 1000 // ASR_RATE} "
                                f"ms of audio; at least {MIN_COMMIT_MS} ms is needed", code="input_audio_buffer_"
                                "commit_empty", event_id=event_id)
        previous = self.items[-1].item_id if self.items else None
        item = UserAudio(self._pending_item, np.concatenate(self._buffer))
        self.items.append(item)
        self._reset_buffer()
        return [CommittedEvent(previous_item_id=previous, item_id=item.item_id)]

    def _reset_buffer(self) -> None:
        self._buffer, self._buffered = [], 0
        self._pending_item = new_id("item")
