"""Speech to text with faster-whisper (CTranslate2).

Each step advances one request by one segment, round robin, so several
transcriptions share the stage and a streaming client sees text as each
segment is decoded. Outputs carry one audio item each (`index`), in order;
`done` follows the last item.

A short clip whose segment times nobody asked for (a spoken turn in a chat or a realtime session) is
heard in one pass over a window fitted to it, not Whisper's 30 s: the encoder's cost follows the window
(on 2 cores, 20 ms for 10 s against 170 ms for 30 s). The window is the clip and at least 2 s of silence
(audio zeros, as in Whisper's training: zero features, as faster-whisper pads, are not silence and make
short windows mishear), 10 s at least (shorter ones make Whisper loop on some clips). A text that looks
like a loop (zlib's compression ratio over 2.4, Whisper's own test) is heard again the usual way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import InvalidRequest
from omniserve.executors.base import RoundRobinExecutor, request_params
from omniserve.media.audio import ASR_RATE
from omniserve.runtime.facts import StageFacts
from omniserve.runtime.types import MediaReading, OmniOutput, OmniRequest


class WhisperArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str
    threads: int = Field(2, ge=1)
    compute_type: str = "int8"
    device: str = "cpu"
    beam_size: int = Field(1, ge=1, le=16)


class AsrParams(BaseModel):
    """What a request may set for this stage (`OmniRequest.params[stage]`)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field("transcribe", pattern="^(transcribe|translate)$")
    language: str | None = None
    prompt: str | None = None
    temperature: float = Field(0.0, ge=0, le=1)
    word_timestamps: bool = False
    segments: bool = False  # the segments with their times (the transcription API); else the text may come whole


@dataclass
class _Job:
    request_id: str
    params: AsrParams
    audios: list[Any]
    index: int = 0
    segments: Iterator | None = None
    info: Any = None
    texts: list[str] = field(default_factory=list)


class WhisperExecutor(RoundRobinExecutor):
    args: WhisperArgs

    def __init__(self, args: WhisperArgs, stage: str = "asr"):
        super().__init__(args, stage)

    def load(self) -> StageFacts:
        from faster_whisper import WhisperModel

        path = Path(self.args.model_path)
        if not (path / "model.bin").exists():
            raise FileNotFoundError(f"{path} is not a CTranslate2 Whisper folder (no model.bin)")
        self._model = WhisperModel(str(path), device=self.args.device, compute_type=self.args.compute_type,
                                   cpu_threads=self.args.threads)
        self.multilingual = bool(self._model.model.is_multilingual)
        return StageFacts(model_path=str(path), multilingual=self.multilingual, sample_rate=ASR_RATE)

    def add(self, request: OmniRequest) -> list[OmniOutput]:
        params = request_params(AsrParams, request.params_for(self.stage))
        if not self.multilingual:
            if params.task == "translate":
                raise InvalidRequest("the served speech model is English-only and cannot translate; serve a "
                                     "multilingual Whisper model (--asr-model) for /v1/audio/translations",
                                     param="model")
            if params.language not in (None, "en"):
                raise InvalidRequest(f"language: the served speech model is English-only; got {params.language!r}",
                                     param="language")
        if not request.audios:
            raise InvalidRequest("no audio to transcribe", param="file")
        self._jobs.append(_Job(request.request_id, params, list(request.audios)))
        return [OmniOutput(request.request_id, started=True)]

    def advance(self, job: _Job) -> tuple[list[OmniOutput], bool]:
        """One segment of the current audio item; after its last, the item's summary."""
        if job.segments is None and (quick := self._quick(job)) is not None:
            job.segments, job.info = iter([quick]), _Heard(quick.end, job.params.language or "en")
        if job.segments is None:
            p = job.params
            job.segments, job.info = self._model.transcribe(
                job.audios[job.index], language=p.language or (None if self.multilingual else "en"), task=p.task,
                initial_prompt=p.prompt or None, temperature=p.temperature, beam_size=self.args.beam_size,
                word_timestamps=p.word_timestamps, vad_filter=False,
            )
        segment = next(job.segments, None)
        if segment is not None:
            job.texts.append(segment.text)
            return [OmniOutput(job.request_id, index=job.index, text=segment.text, segments=[_segment(segment)])], False
        done = job.index == len(job.audios) - 1
        out = OmniOutput(job.request_id, index=job.index, finish_reason="stop", done=done,
                         data=MediaReading("audio", "".join(job.texts).strip(), language=job.info.language,
                                           duration=job.info.duration))
        job.index, job.segments, job.texts = job.index + 1, None, []
        return [out], done


    def _quick(self, job: _Job) -> _QuickSegment | None:
        """The current clip's text in one pass over a window fitted to it (None: not a short turn, or the
        text looks like a loop)."""
        p = job.params
        audio = job.audios[job.index]
        language = p.language or (None if self.multilingual else "en")  # else Whisper would tell it
        if p.segments or p.word_timestamps or p.prompt or p.temperature or language is None or \
                len(audio) > QUICK_MAX_S * ASR_RATE:
            return None
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

        model = self._model
        # the window: the clip, then silence (audio zeros, as Whisper was trained with; not zero features)
        window = min(WINDOW_S * ASR_RATE, max(QUICK_MIN_S * ASR_RATE, len(audio) + QUICK_PAD_S * ASR_RATE))
        features = model.feature_extractor(np.pad(audio, (0, window - len(audio))))[:, :window // HOP]
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=p.task,
                              language=language)
        prompt = model.get_prompt(tokenizer, [])  # with timestamps: Whisper hears short turns better so
        result = model.model.generate(model.encode(features), [prompt],
                                      beam_size=self.args.beam_size, max_length=model.max_length,
                                      suppress_blank=True, suppress_tokens=get_suppressed_tokens(tokenizer, [-1]))[0]
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]  # the words, less the times
        text = tokenizer.decode(tokens)
        if len(prompt) + len(result.sequences_ids[0]) >= model.max_length or get_compression_ratio(text.strip()) > 2.4:
            return None
        return _QuickSegment(text=text, end=len(audio) / ASR_RATE, tokens=tokens)


QUICK_MAX_S = 20  # longer clips take the usual way (the window would save little)
WINDOW_S = 30  # Whisper's
QUICK_MIN_S, QUICK_PAD_S = 10, 2
HOP = 160  # samples per feature frame


@dataclass
class _QuickSegment:
    """A clip's text heard in one pass, shaped as a faster-whisper segment."""

    text: str
    end: float
    tokens: list[int]
    id: int = 1
    seek: int = 0
    start: float = 0.0
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: None = None


@dataclass
class _Heard:
    """What faster-whisper's `info` tells of a clip heard in one pass."""

    duration: float
    language: str


def _segment(s) -> dict[str, Any]:
    out = {
        "id": s.id - 1, "seek": s.seek, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text,
        "tokens": list(s.tokens), "temperature": s.temperature, "avg_logprob": s.avg_logprob,
        "compression_ratio": s.compression_ratio, "no_speech_prob": s.no_speech_prob,
    }
    if s.words:
        out["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in s.words]
    return out
