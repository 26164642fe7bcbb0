"""Voice models that speak a sentence frame by frame, batched: Pocket TTS (on transformers, or as GGUF) and
Qwen3-TTS (as GGUF). Each step, every sentence being spoken makes one frame; frames leave as audio in chunks
that grow (the first soon); a custom voice of the voice library is its sample encoded once by the model and kept.
How text becomes sentences and choices take turns is `SentenceSpeaker`'s."""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from omniserve.errors import InvalidRequest
from omniserve.executors.base import StepResult
from omniserve.executors.sentence_speech import SentenceSpeaker, SpeechParams, _Job, _Voice
from omniserve.runtime.facts import StageFacts, VoiceDetail
from omniserve.runtime.types import OmniOutput
from omniserve.voices import OPENAI_VOICES, language_tag

SAMPLE_RATE = 24000
FRAME_RATE = 12.5  # frames a second (1920 samples each at 24 kHz)
MAX_CUSTOM_VOICES = 64  # encoded custom voices kept in memory
SAMPLE_SECONDS = 30.0  # a custom voice's sample is no longer (the voice library's limit)
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")  # a built-in voice given as a clip


class ClonedSpeechParams(SpeechParams):
    seed: int | None = Field(None, ge=0, lt=2**63)  # the same seed, text and voice: the same audio


@dataclass(frozen=True)
class _Settings:
    latents: Any  # the voice as the model's prompt takes it (None: the model's own voice)
    seed: int
    language: Any = None  # as the model takes it (`_language`)


@dataclass
class _Utterance:
    """One sentence being spoken: where its generation stands and the frames not yet sent."""

    job: _Job
    voice: _Voice
    text: str
    frames_after_eos: int
    budget: int  # at most this many frames
    position: int = 0  # the next input's position
    eos: bool = False  # the state the next frame is sampled from says the speech ends
    frames: list[Any] = field(default_factory=list)  # for the codec
    sent: int = 0  # frames decoded and sent
    chunk: int = 0  # the next chunk's size in frames
    countdown: int = -1  # frames left after the end of speech; -1: not seen yet
    done: bool = False


class FrameSpeaker(SentenceSpeaker):
    """A voice model that speaks a sentence frame by frame (Pocket TTS, Qwen3-TTS), whatever runs it: the
    request's settings and voices, the batch of sentences (one frame each per step), when a sentence ends, and
    when its frames leave as audio. A subclass loads the model and says which languages it speaks
    (`_language`), how a sentence starts (`_start`), how each sentence's next frame is sampled (`_sample`), how
    the backbone takes the frames in (`_backbone_step`), and how frames become audio (`_decode`). A voice is
    whatever the subclass's prompt takes (`_voices`, and `encode_voice` for a custom one, kept in the voice
    library as `_prepared_tensor` under `_codec_key`)."""

    params_model = ClonedSpeechParams
    model_name = ""  # in error messages
    _prepared_tensor = "audio_prompt_latents"

    def __init__(self, args: Any, stage: str = "talker"):
        super().__init__(args, stage)
        self.sample_rate = SAMPLE_RATE
        self._active: list[_Utterance] = []  # the batch
        self._custom: OrderedDict[str, Any] = OrderedDict()  # custom voice id -> its prompt, most recent last
        self._voices: dict[str, Any] = {}
        self._library = None
        self._codec_key = ""
        self._min_frames = 0

    def _open_library(self) -> None:
        if self.args.voice_library:
            from omniserve.voice_library.store import VoiceLibrary

            self._library = VoiceLibrary(Path(self.args.voice_library))

    def _facts(self, root: Path, **more: Any) -> StageFacts:
        """What every frame speaker tells, with `more` (its device, ...)."""
        names = list(self._voices)
        return StageFacts.model_validate({
            "model_path": str(root), "sample_rate": SAMPLE_RATE, "voices": names,
            "voice_details": {name: VoiceDetail(language="en") for name in names},
            "openai_voices": {name: names[i % len(names)] for i, name in enumerate(OPENAI_VOICES)}, "clones": True,
        } | more)

    def _warm_up(self) -> None:
        """A sentence through every path (prefill, a batched step, the codec), so the first request's is not
        the slow first run."""
        job = _Job("warm-up", _Settings(next(iter(self._voices.values())), 0, self._language(None)),
                   [_Voice(0), _Voice(1)])
        self._active = [self._start(job, voice, "Ready.") for voice in job.voices]
        for _ in range(2):
            self._decode(self._advance()[0])
        self._drop(list(self._active))
        self._forget("warm-up")

    def _forget(self, request_id: str) -> None:
        """A request's state kept across its sentences, once it is over."""

    # ---- a request's settings ------------------------------------------------------------------------------

    def _settings(self, params: ClonedSpeechParams) -> _Settings:
        for knob in ("noise_scale", "noise_w_scale"):
            if getattr(params, knob) is not None:
                raise InvalidRequest(f"{knob}: Piper's setting; a {self.model_name} voice has none", param=knob)
        if params.speed != 1.0:
            raise InvalidRequest(f"speed: {self.model_name} speaks at its own pace; leave speed at 1.0",
                                 param="speed")
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        return _Settings(self._latents(params.voice), seed, self._language(params.language))

    def _language(self, language: str | None) -> Any:
        """A request's language as the model takes it; raises InvalidRequest for one it does not speak."""
        raise NotImplementedError

    def _latents(self, voice: str | None):
        if voice is None:
            return next(iter(self._voices.values()))
        if voice.startswith("voice_"):
            return self._custom_latents(voice)
        name = next((n for n in self._voices if n.lower() == voice.lower()), None)
        if name is None:
            raise InvalidRequest(f"voice: unknown voice {voice!r}; valid voices: {', '.join(self._voices)}",
                                 param="voice")
        return self._voices[name]

    def _custom_latents(self, voice_id: str):
        """A custom voice's prompt: its sample encoded once (when the voice is made), kept in the voice library
        beside the sample, and in memory once used."""
        if voice_id in self._custom:
            self._custom.move_to_end(voice_id)
            return self._custom[voice_id]
        import numpy as np
        from safetensors.numpy import load, save

        from omniserve.media.audio import decode_audio

        found = self._library.voice(voice_id) if self._library is not None else None
        if found is None or found.disabled or not found.sample:
            raise InvalidRequest(f"voice: {voice_id} is not a voice of the voice library", param="voice",
                                 code="voice_not_found")
        kept = self._library.prepared_path(voice_id, self._codec_key)
        if kept.is_file():
            latents = self._as_prompt(load(kept.read_bytes())[self._prepared_tensor])
        else:
            audio = decode_audio(self._library.path(found.sample).read_bytes(), where="voice",
                                 max_seconds=SAMPLE_SECONDS, rate=SAMPLE_RATE)
            latents = self.encode_voice(audio)
            self._library.keep_prepared(voice_id, self._codec_key,
                                        save({self._prepared_tensor: np.ascontiguousarray(np.asarray(latents))}))
        self._custom[voice_id] = latents
        if len(self._custom) > MAX_CUSTOM_VOICES:
            self._custom.popitem(last=False)
        return latents

    def _as_prompt(self, array: Any) -> Any:
        """A kept voice (a numpy array) as this model's prompt takes it."""
        return array

    def encode_voice(self, wave) -> Any:
        raise NotImplementedError

    # ---- speaking ----------------------------------------------------------------------------------------

    def abort(self, request_id: str) -> None:
        super().abort(request_id)
        self._drop([u for u in self._active if u.job.request_id == request_id])
        self._forget(request_id)

    def close(self) -> None:
        super().close()
        self._active = []

    def has_work(self) -> bool:
        return bool(self._active) or super().has_work()

    def step(self) -> StepResult:
        """Start the sentences that have room in the batch, then one frame for every sentence in it."""
        out: list[OmniOutput] = []
        while len(self._active) < self.args.max_batch and (turn := self._next_sentence()) is not None:
            self._active.append(self._start(*turn))
        batch = len(self._active)
        if self._active:
            out += self._emit(self._advance())
        return self.result(out, max(1, batch))

    def _start(self, job: _Job, voice: _Voice, sentence: str) -> _Utterance:
        """The sentence's prompt through the backbone: the state its first frame is sampled from."""
        raise NotImplementedError

    def _sample(self, rows: list[_Utterance]) -> None:
        """The next frame of every sentence in the batch, from its last state: appended to its `frames`, and
        kept as the backbone's next input."""
        raise NotImplementedError

    def _backbone_step(self) -> None:
        """The batch's last frames through the backbone, all rows at once: each row's next state and `eos`."""
        raise NotImplementedError

    def _decode(self, u: _Utterance) -> bytes:
        """The frames not yet sent as 16-bit PCM, joining the audio sent before."""
        raise NotImplementedError

    def _drop(self, leaving: list[_Utterance]) -> None:
        """Take sentences out of the batch."""
        if leaving:
            self._active = [u for u in self._active if u not in leaving]

    def _advance(self) -> list[_Utterance]:
        """One frame for every sentence in the batch: sample it from the last state, then (for those that go
        on) one backbone step on it, all rows at once. A sentence ends `frames_after_eos` frames after the
        first state that says so (from frame `_min_frames` on), or at its budget."""
        rows = self._active
        self._sample(rows)
        for u in rows:
            index = len(u.frames) - 1
            if u.countdown < 0 and u.eos and index >= self._min_frames:
                u.countdown = u.frames_after_eos
            if u.countdown == 0 or len(u.frames) >= u.budget:
                u.done = True
            elif u.countdown > 0:
                u.countdown -= 1
        self._drop([u for u in rows if u.done])
        if self._active:
            self._backbone_step()
        return rows

    def _emit(self, rows: list[_Utterance]) -> list[OmniOutput]:
        """Audio for each sentence that has a chunk's worth of new frames (or ended), and the end of those
        that did."""
        out: list[OmniOutput] = []
        for u in rows:
            if u.job.request_id not in self._jobs:
                continue
            u.chunk = u.chunk or self.args.first_chunk_frames
            if u.done or len(u.frames) - u.sent >= u.chunk:
                out.append(self._spoken(u.job, u.voice, self._decode(u), u.text if u.sent == 0 else ""))
                u.sent, u.chunk = len(u.frames), min(2 * u.chunk, self.args.max_chunk_frames)
            if u.done:
                out += self._sentence_done(u.job, u.voice)
                if u.job.request_id not in self._jobs:
                    self._forget(u.job.request_id)
        return out


def budget(text_tokens: int) -> int:
    """The most frames a sentence of this many tokens gets (the original's estimate, 12.5 frames a second)."""
    return math.ceil((text_tokens / 3 + 2) * FRAME_RATE)


def read_voices(folder: Path) -> dict[str, Any]:
    """A checkpoint's built-in voices: `voices/<name>.safetensors`, each the codec's latents of a voice clip
    (`audio_prompt_latents`, N x 32), as numpy arrays."""
    from safetensors.numpy import load_file

    voices = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors = load_file(file)
        if "audio_prompt_latents" not in tensors:
            raise ValueError(f"{file}: a voice file holds `audio_prompt_latents` (the codec's latents of a "
                             f"voice clip); this one holds {', '.join(sorted(tensors)) or 'nothing'}")
        voices[file.stem] = tensors["audio_prompt_latents"].astype("float32")
    return voices


def english_only(model_name: str, language: str | None) -> None:
    """A 400 for a language other than English."""
    if language and (language_tag(language) or "").split("-")[0] != "en":
        raise InvalidRequest(f"language: {model_name} speaks English only; got {language!r}", param="language")


def read_voice_clips(folder: Path, encode: Callable[[Any], Any], rate: int) -> dict[str, Any]:
    """Built-in voices given as clips (`<name>.wav`, ...), each through `encode` once."""
    from omniserve.media.audio import decode_audio

    return {clip.stem: encode(decode_audio(clip.read_bytes(), where=str(clip), max_seconds=SAMPLE_SECONDS, rate=rate))
            for clip in sorted(p for p in folder.glob("*") if p.suffix.lower() in AUDIO_SUFFIXES)}
