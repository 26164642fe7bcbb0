"""Text to speech one sentence at a time: what every sentence-level voice model (Piper, Kokoro) shares.

A request's text arrives whole (`OmniRequest.prompt`, the speech endpoint)
or as a stream of upstream text chunks (the thinker, on a streaming edge),
where each of the answer's choices (`index`) gets a voice of its own.
Either way it is cut into sentences and each step speaks one sentence of
one choice of one request, round robin: the first audio leaves after the
first sentence (or the first clause), not after the whole text, and
concurrent requests take turns. A model says how to speak one sentence
(`_speak`) and what a request's settings mean to it (`_settings`).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from omniserve.calls import CallFilter
from omniserve.executors.base import Executor, StepResult, request_params
from omniserve.runtime.types import OmniOutput, OmniRequest

# A sentence ends at . ! ? ; : (and their CJK forms) or a newline, followed by white space.
_SENTENCE_END = re.compile(r"[.!?;:]+[\"')\]]*\s+|[\u3002\uff01\uff1f\uff1b]+|\n+")
_MAX_CHUNK_CHARS = 300  # a run-on "sentence" is cut at a space past this length
# The first chunk of an answer may end before its sentence does, so that the voice starts sooner: after a
# clause of at least 3 words, or after this many words.
_OPENING_WORDS = 8
_CLAUSE_END = re.compile(r"[,\u2014\u2013]\s+|\s[-\u2014\u2013]\s+")
_WORD = re.compile(r"\S+\s+")
# Control characters say nothing, and espeak-ng's phonemizer refuses a NUL: spoken text goes without them.
_UNSPOKEN = dict.fromkeys([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])


class SpeechParams(BaseModel):
    """What a request may set for a speech stage (`OmniRequest.params[stage]`)."""

    model_config = ConfigDict(extra="forbid")

    voice: str | None = None
    speed: float = Field(1.0, ge=0.25, le=4.0)
    language: str | None = None  # a language tag or name (voices.language_tag); None: the voice's own
    noise_scale: float | None = Field(None, ge=0, le=2)  # Piper's own knobs
    noise_w_scale: float | None = Field(None, ge=0, le=2)
    choices: int = Field(1, ge=1, le=16, description="the upstream answer's choices, each spoken on its own")
    unspoken_calls: bool = False  # the text may hold tool calls: they are not read aloud


def split_sentences(buffer: str, final: bool, opening: bool = False) -> tuple[list[str], str]:
    """Complete sentences in `buffer`, and the unfinished rest (all of it when `final`). `opening`: nothing of
    this answer was cut yet, and its first chunk may be the first clause or words of its first sentence."""
    out, start = [], 0
    for match in _SENTENCE_END.finditer(buffer):
        out.append(buffer[start:match.end()])
        start = match.end()
    rest = buffer[start:]
    if opening and not out and (cut := _opening_cut(rest)):
        out.append(rest[:cut])
        rest = rest[cut:]
    while len(rest) > _MAX_CHUNK_CHARS and " " in rest[_MAX_CHUNK_CHARS // 2:]:
        cut = rest.rindex(" ", 0, _MAX_CHUNK_CHARS) if " " in rest[:_MAX_CHUNK_CHARS] else rest.index(" ")
        out.append(rest[:cut + 1])
        rest = rest[cut + 1:]
    if final and rest:
        out.append(rest)
        rest = ""
    return [s for s in out if s.strip()], rest


def _opening_cut(text: str) -> int:
    """Where an answer's first chunk may end inside its first sentence (0: not yet)."""
    for match in _CLAUSE_END.finditer(text):
        if len(text[:match.start()].split()) >= 3:
            return match.end()
    words = list(_WORD.finditer(text))
    return words[_OPENING_WORDS - 1].end() if len(words) >= _OPENING_WORDS else 0


@dataclass
class _Voice:
    """The speech of one choice of a request."""

    index: int
    calls: CallFilter | None = None  # cuts tool calls out of its text
    sentences: deque[str] = field(default_factory=deque)
    buffer: str = ""
    text_done: bool = False  # no more text will come
    finished: bool = False
    speaking: bool = False  # a sentence of it is being spoken (by a model that speaks one over several steps)
    samples: int = 0
    characters: int = 0


@dataclass
class _Job:
    request_id: str
    settings: Any  # what the model speaks this request with (`_settings`)
    voices: list[_Voice]


class SentenceSpeaker(Executor):
    """The executor side every sentence-level voice shares; a subclass loads its model and sets
    `sample_rate`, and defines `_settings` and `_speak`."""

    sample_rate: int
    params_model: type[SpeechParams] = SpeechParams  # what a request may set

    def __init__(self, args: Any, stage: str = "talker"):
        super().__init__(args, stage)
        self._jobs: dict[str, _Job] = {}
        self._turns: deque[tuple[str, int]] = deque()  # round robin over (request, choice) with a sentence ready

    def _settings(self, params: SpeechParams) -> Any:
        """A request's settings as the model speaks them; raises InvalidRequest for ones it cannot."""
        raise NotImplementedError

    def _speak(self, text: str, settings: Any) -> bytes:
        """One sentence as 16-bit mono PCM at `sample_rate`."""
        raise NotImplementedError

    def close(self) -> None:
        self._jobs.clear()

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        params = request_params(self.params_model, request.params_for(self.stage))
        job = _Job(request.request_id, self._settings(params),
                   [_Voice(i, CallFilter() if params.unspoken_calls else None) for i in range(params.choices)])
        self._jobs[job.request_id] = job
        if isinstance(request.prompt, str):  # the whole text is here: speak it
            return [OmniOutput(request.request_id, started=True)] + self._take_text(job, 0, request.prompt, True)
        return []  # text will stream in from upstream

    def feed(self, outputs: list[OmniOutput]) -> list[OmniOutput]:
        job = self._jobs.get(outputs[0].request_id)
        if job is None:
            return []
        out = []
        for o in outputs:  # a choice's finish_reason means no more text for it
            if o.index < len(job.voices):
                out += self._take_text(job, o.index, o.text, final=o.finish_reason is not None or o.done)
            if o.done:  # the request is over upstream: so is every choice's text
                for voice in job.voices:
                    out += self._take_text(job, voice.index, "", final=True)
        return out

    def abort(self, request_id: str) -> None:
        self._jobs.pop(request_id, None)

    def has_work(self) -> bool:
        return bool(self._turns)

    def step(self) -> StepResult:
        turn = self._next_sentence()
        if turn is None:
            return self.result([])
        job, voice, sentence = turn
        pcm = self._speak(sentence, job.settings)
        return self.result([self._spoken(job, voice, pcm, sentence)] + self._sentence_done(job, voice))

    def _next_sentence(self) -> tuple[_Job, _Voice, str] | None:
        """The next sentence to speak, round robin over the choices that have one; its choice is `speaking`
        until `_sentence_done`."""
        while self._turns:
            request_id, index = self._turns.popleft()
            job = self._jobs.get(request_id)
            if job is not None and job.voices[index].sentences:
                voice = job.voices[index]
                voice.speaking = True
                return job, voice, voice.sentences.popleft()
        return None

    def _spoken(self, job: _Job, voice: _Voice, pcm: bytes, text: str) -> OmniOutput:
        """An output of speech: `text` is what the audio says (given once per sentence)."""
        voice.samples += len(pcm) // 2
        voice.characters += len(text)
        return OmniOutput(job.request_id, index=voice.index, text=text, audio=pcm, sample_rate=self.sample_rate)

    def _sentence_done(self, job: _Job, voice: _Voice) -> list[OmniOutput]:
        """The choice's sentence is spoken: it takes its next turn, or ends if its text has."""
        voice.speaking = False
        if voice.sentences:
            self._turns.append((job.request_id, voice.index))
        elif voice.text_done:
            return self._finish(job, voice)
        return []

    def _take_text(self, job: _Job, index: int, text: str, final: bool) -> list[OmniOutput]:
        voice = job.voices[index]
        if voice.finished or job.request_id not in self._jobs:
            return []
        if voice.calls is not None:
            text = voice.calls.push(text)
        opening = not voice.sentences and voice.characters == 0 and not voice.speaking
        sentences, voice.buffer = split_sentences(voice.buffer + text.translate(_UNSPOKEN), final, opening)
        voice.text_done = voice.text_done or final
        if sentences and not voice.sentences and not voice.speaking:
            self._turns.append((job.request_id, index))
        voice.sentences.extend(sentences)
        done = voice.text_done and not voice.sentences and not voice.speaking
        return self._finish(job, voice) if done else []

    def _finish(self, job: _Job, voice: _Voice) -> list[OmniOutput]:
        """A choice's last output; the request's too (`done`) once every choice has ended."""
        voice.finished = True
        done = all(v.finished for v in job.voices)
        if done:
            del self._jobs[job.request_id]
        return [OmniOutput(job.request_id, index=voice.index, finish_reason="stop", done=done,
                           sample_rate=self.sample_rate)]


def to_pcm16(audio: Any) -> bytes:
    """Float samples in [-1, 1] as 16-bit PCM bytes."""
    import numpy as np

    return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
