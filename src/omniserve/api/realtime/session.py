"""One realtime session's state: its settings, its input audio buffer with server-side turn detection,
and its conversation. It takes client events and answers with server events, and with actions for the
connection to carry out (transcribe an item, start or cancel a response), so it holds no tasks itself.

Audio arrives as base64 chunks in the session's input format and is kept as mono float32 at 16 kHz
(what turn detection and speech to text take). With `server_vad`, speech starting and stopping are
events, and a stop commits the buffer as a user item and asks for a response; without it, the client
commits. Times are in milliseconds of all the audio the session was sent, as at OpenAI."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from omniserve.api.realtime.conversation import Conversation, item_from_spec, new_id
from omniserve.api.realtime.events import (
    AudioInputOut,
    AudioOut,
    AudioOutputOut,
    ClearedEvent,
    CommittedEvent,
    ContentPart,
    FormatOut,
    Item,
    ItemDeletedEvent,
    ItemEvent,
    ItemTruncatedEvent,
    ServerEvent,
    SessionEvent,
    SessionOut,
    SpeechStartedEvent,
    SpeechStoppedEvent,
    TurnDetectionOut,
)
from omniserve.api.realtime.limits import MAX_APPEND_BYTES, SessionLimits
from omniserve.api.realtime.protocol import (
    ClientEvent,
    InputAudioAppend,
    InputAudioClear,
    InputAudioCommit,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemSpec,
    ItemTruncate,
    OutputAudioClear,
    RealtimeError,
    ResponseCancel,
    ResponseCreate,
    ResponseSpec,
    SessionSpec,
    SessionUpdate,
    audio_format,
)
from omniserve.api.realtime.settings import ResponseOptions, SessionSettings
from omniserve.errors import InvalidRequest
from omniserve.media.pcm import ASR_RATE, PcmReader
from omniserve.media.vad import (
    SileroVad,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    TurnSettings,
)

MIN_COMMIT_MS = 100  # a shorter buffer is nothing to answer
# with server_vad, the quiet before speech is kept only this long (an open microphone streams it for ever)
QUIET_KEPT_MS = 10_000


# ---- what the connection is asked to do ------------------------------------------------------------


@dataclass
class Transcribe:
    """Transcribe a user item's audio."""

    item_id: str


@dataclass
class TranscribeSoFar:
    """Transcribe the buffer so far, which is likely to become item `item_id` (the speaker paused), and
    begin the answer with `answer` (None: the turn's end starts none)."""

    item_id: str
    audio: np.ndarray
    answer: ResponseOptions | None = None


@dataclass
class ForgetSoFar:
    """The speaker went on: what `TranscribeSoFar` began is not the turn."""


@dataclass
class StartResponse:
    options: ResponseOptions
    event_id: str | None = None


@dataclass
class CancelResponse:
    reason: Literal["turn_detected", "client_cancelled"]
    event_id: str | None = None


@dataclass
class ClearOutputAudio:
    """Stop the answer's audio still to play (over WebRTC, where it plays from the server's track)."""

    event_id: str | None = None


Action = Transcribe | TranscribeSoFar | ForgetSoFar | StartResponse | CancelResponse | ClearOutputAudio


class RealtimeSession:
    def __init__(self, model: str, voice: str | None, vad: SileroVad, transcriber: str | None = None,
                 limits: SessionLimits = SessionLimits(), check_voice: Callable[[str, str], None] | None = None):
        """`voice`: the default voice (None: no talker). `check_voice(name, param)`: raises InvalidRequest
        for a voice no talker speaks (None: any name goes). `transcriber`: the speech-to-text model that
        transcribes the user's audio (None: none served)."""
        self.id = new_id("sess")
        self.limits = limits
        self.model = model
        self._check_voice = check_voice
        self.settings = SessionSettings(voice=voice or "alloy")
        self.conversation = Conversation()
        self.transcriber = transcriber
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

    def handle(self, event: ClientEvent) -> list[ServerEvent | Action]:
        match event:
            case SessionUpdate(session=spec):
                self._update(spec, event.event_id)
                return [SessionEvent(type="session.updated", session=self.describe())]
            case InputAudioAppend(audio=audio):
                return self._append(audio, event.event_id)
            case InputAudioCommit():
                return self._commit(event.event_id)
            case InputAudioClear():
                self._reset_buffer()
                self._restart_detector()
                return [ClearedEvent()]
            case ItemCreate(item=spec, previous_item_id=previous):
                item, audio = item_from_spec(spec, self._decode_audio, event.event_id)
                return self._add_item(item, audio, previous, event.event_id)
            case ItemRetrieve(item_id=item_id):
                item = self.conversation.get(item_id, event.event_id)
                return [ItemEvent(type="conversation.item.retrieved", item=item)]
            case ItemDelete(item_id=item_id):
                self.conversation.delete(item_id, event.event_id)
                return [ItemDeletedEvent(item_id=item_id)]
            case ItemTruncate(item_id=item_id, content_index=index, audio_end_ms=end_ms):
                self.conversation.truncate(item_id, index, end_ms, event.event_id)
                return [ItemTruncatedEvent(item_id=item_id, content_index=index, audio_end_ms=end_ms)]
            case ResponseCreate(response=spec):
                return [StartResponse(self.response_options(spec or ResponseSpec(), event.event_id), event.event_id)]
            case ResponseCancel():
                return [CancelResponse("client_cancelled", event.event_id)]
            case OutputAudioClear():
                return [ClearOutputAudio(event.event_id)]
        raise RealtimeError(f"{event.type} is not handled yet", event_id=event.event_id)

    def configure(self, spec: SessionSpec) -> None:
        """Settings the session starts with (a client secret's), as `session.update` sets them."""
        self._update(spec, None)

    def describe(self) -> SessionOut:
        s = self.settings
        turn = s.turn_detection
        return SessionOut(
            id=self.id, model=self.model, output_modalities=s.output_modalities, instructions=s.instructions,
            temperature=s.temperature, max_output_tokens=s.max_output_tokens, tools=s.tools, tool_choice=s.tool_choice,
            truncation=s.truncation,
            audio=AudioOut(
                input=AudioInputOut(format=FormatOut(type=s.input_format.name, rate=s.input_format.rate),
                                    turn_detection=TurnDetectionOut(**turn.model_dump()) if turn else None,
                                    transcription={"model": self.transcriber} if self.transcriber else None),
                output=AudioOutputOut(format=FormatOut(type=s.output_format.name, rate=s.output_format.rate),
                                      voice=s.voice)))

    # ---- settings ------------------------------------------------------------------------------

    def _update(self, spec: SessionSpec, event_id: str | None) -> None:
        s = self.settings
        fields = spec.model_fields_set
        audio_in = spec.audio.input if spec.audio else None
        audio_out = spec.audio.output if spec.audio else None
        voice = (audio_out.voice if audio_out else None) or spec.voice
        if voice:  # checked first: a bad update changes nothing
            voice = self._voice(voice, "session.audio.output.voice", event_id)
        if spec.instructions is not None:
            s.instructions = spec.instructions
        modalities = spec.output_modalities or spec.modalities
        if modalities:
            s.output_modalities = list(dict.fromkeys(modalities))
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
        if spec.tools is not None:
            s.tools = spec.tools
        if spec.tool_choice is not None:
            s.tool_choice = spec.tool_choice
        if spec.stage_sampling is not None:
            s.stage_sampling = spec.stage_sampling
        if spec.truncation is not None:
            s.truncation = spec.truncation

    def response_options(self, spec: ResponseSpec, event_id: str | None = None) -> ResponseOptions:
        s = self.settings
        audio_out = spec.audio.output if spec.audio else None
        output_format = (audio_out.format if audio_out else None) or spec.output_audio_format
        tokens = spec.max_output_tokens if spec.max_output_tokens is not None else spec.max_response_output_tokens
        tools = spec.tools if spec.tools is not None else s.tools
        choice = spec.tool_choice if spec.tool_choice is not None else s.tool_choice
        if not isinstance(choice, str) and choice.name not in {t.name for t in tools}:
            raise RealtimeError(f"response.create: tool_choice names {choice.name!r}, which is not among the tools",
                                param="response.tool_choice", event_id=event_id)
        return ResponseOptions(
            modalities=list(dict.fromkeys(spec.output_modalities or spec.modalities or s.output_modalities)),
            instructions=spec.instructions if spec.instructions is not None else s.instructions,
            voice=self._voice((audio_out.voice if audio_out else None) or spec.voice or s.voice,
                              "response.audio.output.voice", event_id),
            output_format=audio_format(output_format) if output_format else s.output_format,
            tools=tools, tool_choice=choice,
            stage_sampling=spec.stage_sampling if spec.stage_sampling is not None else s.stage_sampling,
            temperature=spec.temperature if spec.temperature is not None else s.temperature,
            max_output_tokens=tokens if tokens is not None else s.max_output_tokens,
            in_conversation=spec.conversation != "none",
            truncation=s.truncation if spec.conversation != "none" and spec.input is None else "disabled",
            input=[self._input_item(item, k, event_id) for k, item in enumerate(spec.input)]
            if spec.input is not None else None,
            metadata=spec.metadata)

    def _answer_options(self) -> ResponseOptions | None:
        """The options of the response the turn's end would start (None: they are not valid now)."""
        try:
            return self.response_options(ResponseSpec())
        except RealtimeError:
            return None

    def _voice(self, name: str, param: str, event_id: str | None = None) -> str:
        """A voice a talker speaks, as the client named it (which talker speaks it is the response's)."""
        if self._check_voice is not None:
            try:
                self._check_voice(name, param)
            except InvalidRequest as exc:
                raise RealtimeError(exc.message, param=param, event_id=event_id) from None
        return name

    def _input_item(self, spec: ItemSpec, k: int, event_id: str | None) -> Item:
        """An item of `response.create`'s `input`: by reference (`id` alone) or whole."""
        if spec.id and any(i.id == spec.id for i in self.conversation.items):
            return self.conversation.get(spec.id)
        item, audio = item_from_spec(spec, self._decode_audio, event_id)
        if audio is not None:
            raise RealtimeError("response.create: input audio out of band is not supported; add the audio to the "
                                "conversation, or give its transcript", param=f"response.input[{k}]",
                                event_id=event_id)
        return item
    def _restart_detector(self) -> None:
        turn = self.settings.turn_detection
        self._detector = None if turn is None else TurnDetector(self._vad, TurnSettings(
            turn.threshold, turn.prefix_padding_ms, turn.silence_duration_ms))
        self._detector_origin_ms = self._written_ms

    # ---- the input audio buffer ------------------------------------------------------------------

    def _bytes(self, audio: str, where: str, param: str, event_id: str | None) -> bytes:
        """Base64 audio in the session's input format, checked."""
        if len(audio) > MAX_APPEND_BYTES * 4 // 3 + 4:
            raise RealtimeError(f"{where}: the audio is larger than {MAX_APPEND_BYTES} bytes; send it in smaller "
                                "chunks", code="audio_too_large", param=param, event_id=event_id)
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError(f"{where}: `{param}` is not valid base64", code="invalid_base64", param=param,
                                event_id=event_id) from None
        fmt = self.settings.input_format
        if fmt.codec == "pcm16" and len(data) % 2:
            raise RealtimeError(f"{where}: {fmt.name} audio is 16-bit samples, an even number of bytes; got "
                                f"{len(data)}", code="invalid_audio_format", param=param, event_id=event_id)
        return data

    def _decode_audio(self, audio: str, param: str, event_id: str | None = None) -> np.ndarray:
        """A whole clip in an item (its own reader: the buffer's keeps the stream's resampler state)."""
        where = "conversation.item.create"
        data = self._bytes(audio, where, param, event_id)
        self._check_audio(self._seconds(data), where, "the item's audio", param, event_id)
        self._check_bytes(self._kept_bytes(data), where, event_id)
        reader = PcmReader(self.settings.input_format)
        return np.concatenate([reader.read(data), reader.read(b"")])

    # ---- limits ----------------------------------------------------------------------------------

    def _seconds(self, data: bytes) -> float:
        fmt = self.settings.input_format
        return len(data) / fmt.bytes_per_sample / fmt.rate

    def _kept_bytes(self, data: bytes) -> int:
        """What `data` takes once read: float32 samples at 16 kHz."""
        return round(self._seconds(data) * ASR_RATE) * 4

    def _check_audio(self, seconds: float, where: str, what: str, param: str | None, event_id: str | None) -> None:
        limit = self.limits.max_audio_seconds
        if seconds > limit:
            raise RealtimeError(f"{where}: {what} would hold {seconds:.1f} s of audio, over this server's limit of "
                                f"{limit:g} s (--max-audio-seconds); commit or clear the buffer, or send less",
                                code="audio_too_long", param=param, event_id=event_id)

    def _check_bytes(self, more: int, where: str, event_id: str | None) -> None:
        """The conversation, the input buffer and `more` bytes must fit the session's memory limit."""
        held = self.conversation.held_bytes() + self._buffered * 4
        limit = self.limits.max_bytes
        if held + more > limit:
            raise RealtimeError(f"{where}: the session would hold {(held + more) / 2**20:.1f} MiB of items and "
                                f"audio, over this server's limit of {limit / 2**20:g} MiB per session "
                                "(--realtime-max-session-mib); delete items, or start a new session",
                                code="session_too_large", event_id=event_id)

    def _append(self, audio: str, event_id: str | None) -> list[ServerEvent | Action]:
        where = "input_audio_buffer.append"
        data = self._bytes(audio, where, "audio", event_id)
        self._check_audio(self._buffered / ASR_RATE + self._seconds(data), where, "the input audio buffer", "audio",
                          event_id)
        self._check_bytes(self._kept_bytes(data), where, event_id)
        return self._heard(self._reader.read(data), self._seconds(data))

    def hear(self, samples: np.ndarray) -> list[ServerEvent | Action]:
        """The user's audio from a media track (WebRTC): mono float32 at 16 kHz (the session's input format is
        for `input_audio_buffer.append`). Past the buffer's limits it raises, as an append would."""
        where = "the microphone track"
        seconds = len(samples) / ASR_RATE
        self._check_audio(self._buffered / ASR_RATE + seconds, where, "the input audio buffer", None, None)
        self._check_bytes(len(samples) * 4, where, None)
        return self._heard(samples, seconds)

    def _heard(self, samples: np.ndarray, seconds: float) -> list[ServerEvent | Action]:
        """New audio in the buffer: turn detection on it."""
        self._written_ms += seconds * 1000
        self._buffer.append(samples)
        self._buffered += len(samples)
        events: list[ServerEvent | Action] = []
        turn_settings = self.settings.turn_detection
        for turn in self._detector.feed(samples) if self._detector else []:
            match turn:
                case SpeechStarted(audio_start_ms=start_ms):
                    events.append(SpeechStartedEvent(audio_start_ms=round(self._detector_origin_ms + start_ms),
                                                     item_id=self._pending_item))
                    if turn_settings.interrupt_response:
                        events.append(CancelResponse("turn_detected"))  # barge-in (nothing, when no response runs)
                case SpeechPaused() if self.transcriber is not None:
                    # what was said so far is likely the turn: transcribing it now hides that work in the silence
                    events.append(TranscribeSoFar(self._pending_item, np.concatenate(self._buffer),
                                                  self._answer_options() if turn_settings.create_response else None))
                case SpeechResumed():
                    events.append(ForgetSoFar())  # it was not the end of the turn
                case SpeechStopped(audio_end_ms=end_ms):
                    events.append(SpeechStoppedEvent(audio_end_ms=round(self._detector_origin_ms + end_ms),
                                                     item_id=self._pending_item))
                    events += self._commit(None)
                    if turn_settings.create_response:
                        events.append(StartResponse(self.response_options(ResponseSpec())))
        if self._detector is not None and not self._detector.speaking:
            self._keep_last(min(QUIET_KEPT_MS, round(self.limits.max_audio_seconds * 500)))  # under half the limit
        return events

    def _keep_last(self, ms: int) -> None:
        """Drop all but the last `ms` of the buffer (the quiet before anyone speaks)."""
        keep = ms * ASR_RATE // 1000
        if self._buffered > keep:
            self._buffer = [np.concatenate(self._buffer)[-keep:]]
            self._buffered = keep

    def _commit(self, event_id: str | None) -> list[ServerEvent | Action]:
        if self._buffered * 1000 < MIN_COMMIT_MS * ASR_RATE:
            raise RealtimeError(f"input_audio_buffer.commit: the buffer holds {self._buffered * 1000 // ASR_RATE} "
                                f"ms of audio; at least {MIN_COMMIT_MS} ms is needed", code="input_audio_buffer_"
                                "commit_empty", event_id=event_id)
        items = self.conversation.items
        previous = items[-1].id if items else None
        item = Item(id=self._pending_item, type="message", role="user",
                    content=[ContentPart(type="input_audio", transcript=None)])
        added = self._add_item(item, np.concatenate(self._buffer), event_id=event_id,
                               where="input_audio_buffer.commit")  # first: a refused item keeps the buffer
        self._reset_buffer()
        return [CommittedEvent(previous_item_id=previous, item_id=item.id), *added]

    def _add_item(self, item: Item, audio: np.ndarray | None, previous_item_id: str | None = None,
                  event_id: str | None = None, where: str = "conversation.item.create") -> list[ServerEvent | Action]:
        limit = self.limits.max_items
        if len(self.conversation.items) >= limit:
            raise RealtimeError(f"{where}: the conversation holds {limit} items, this server's limit "
                                "(--realtime-max-items); delete items, or start a new session",
                                code="too_many_items", event_id=event_id)
        if audio is None:  # a committed buffer was counted as it came; an item's audio as it was decoded
            self._check_bytes(Conversation.item_bytes(item), where, event_id)
        previous = self.conversation.add(item, previous_item_id, audio, event_id)
        events: list[ServerEvent | Action] = [
            ItemEvent(type="conversation.item.added", previous_item_id=previous, item=item),
            ItemEvent(type="conversation.item.done", previous_item_id=previous, item=item)]
        if audio is not None and self.transcriber is not None and not any(p.transcript for p in item.content or []):
            events.append(Transcribe(item.id))
        return events

    def _reset_buffer(self) -> None:
        self._buffer, self._buffered = [], 0
        self._pending_item = new_id("item")
