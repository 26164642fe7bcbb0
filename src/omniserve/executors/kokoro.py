"""Text to speech with Kokoro-82M (ONNX, run by kokoro-onnx): 54 voices in nine languages at 24 kHz, blends of
them, and OpenAI's voice names mapped to distinct voices. Slower than Piper (a sentence in a few hundred ms on
two cores) and better. How text becomes sentences and requests take turns is `SentenceSpeaker`'s."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import InvalidRequest
from omniserve.executors.sentence_speech import SentenceSpeaker, SpeechParams, to_pcm16
from omniserve.onnx_cpu import cpu_session
from omniserve.runtime.facts import StageFacts, VoiceDetail
from omniserve.voices import is_blend, language_tag, parse_blend

SAMPLE_RATE = 24000
SENTENCE_PAUSE, CLAUSE_PAUSE = 0.25, 0.1  # seconds of quiet after a chunk that ends a sentence, or a clause

# A voice's first letter is its language: (BCP 47 tag, espeak-ng voice); its second its gender.
_LANGUAGE_OF_PREFIX = {"a": ("en-US", "en-us"), "b": ("en-GB", "en-gb"), "e": ("es", "es"), "f": ("fr-FR", "fr-fr"),
                       "h": ("hi", "hi"), "i": ("it", "it"), "j": ("ja", "ja"), "p": ("pt-BR", "pt-br"),
                       "z": ("zh", "cmn")}
_ESPEAK = dict(_LANGUAGE_OF_PREFIX.values())
_GENDER = {"f": "female", "m": "male"}

# OpenAI's names, each a distinct voice of the same character.
OPENAI_TO_KOKORO = {
    "alloy": "af_alloy", "ash": "am_adam", "ballad": "bm_lewis", "coral": "af_heart", "echo": "am_echo",
    "fable": "bm_fable", "nova": "af_nova", "onyx": "am_onyx", "sage": "af_sarah", "shimmer": "af_bella",
    "verse": "am_michael", "marin": "bf_emma", "cedar": "am_eric",
}


def voice_details(name: str) -> VoiceDetail:
    language = _LANGUAGE_OF_PREFIX.get(name[:1])
    return VoiceDetail(language=language[0] if language else None, gender=_GENDER.get(name[1:2]))


class KokoroArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str
    voices_path: str  # an .npz of [510, 1, 256] style arrays, one per voice
    threads: int = Field(2, ge=1)


@dataclass(frozen=True)
class _Settings:
    style: np.ndarray  # [510, 1, 256]: the voice, or the blend's weighted sum
    speed: float
    espeak: str  # the language espeak-ng phonemizes in


class KokoroExecutor(SentenceSpeaker):
    def __init__(self, args: KokoroArgs, stage: str = "talker"):
        super().__init__(args, stage)
        self.sample_rate = SAMPLE_RATE

    def load(self) -> StageFacts:
        from kokoro_onnx.session import embedded_vocab
        from kokoro_onnx.tokenizer import Tokenizer

        self._session = cpu_session(self.args.model_path, self.args.threads)
        inputs = {i.name for i in self._session.get_inputs()}
        self._tokens_input = "input_ids" if "input_ids" in inputs else "tokens"  # newer exports' name
        self._tokenizer = Tokenizer(vocab=embedded_vocab(self._session) or None)
        with np.load(self.args.voices_path) as npz:
            self._styles = {name: npz[name] for name in sorted(npz.files)}
        names = list(self._styles)
        default = "af_heart" if "af_heart" in self._styles else names[0]
        self._speak("Ready.", self._settings(SpeechParams()))  # the first run of a graph is slow: not a request's
        return StageFacts(model_path=self.args.model_path, sample_rate=SAMPLE_RATE,
                          voices=[default] + [n for n in names if n != default],
                          voice_details={n: voice_details(n) for n in names},
                          openai_voices={k: v for k, v in OPENAI_TO_KOKORO.items() if v in self._styles},
                          blends=True)

    def _settings(self, params: SpeechParams) -> _Settings:
        for knob in ("noise_scale", "noise_w_scale"):
            if getattr(params, knob) is not None:
                raise InvalidRequest(f"{knob}: Piper's setting; a Kokoro voice has none", param=knob)
        style, first = self._style(params.voice or "af_heart")
        if params.language:
            tag = language_tag(params.language)
            espeak = _ESPEAK.get(tag or "")
            if espeak is None:
                raise InvalidRequest(f"language: Kokoro speaks {', '.join(_ESPEAK)}; got {params.language!r}",
                                     param="language")
        else:
            espeak = _LANGUAGE_OF_PREFIX.get(first[:1], ("en-US", "en-us"))[1]
        return _Settings(style, params.speed, espeak)

    def _style(self, voice: str) -> tuple[np.ndarray, str]:
        """The style array of a voice or a blend, and the (first) voice it is made of, which gives the
        language."""
        try:
            parts = parse_blend(voice) if is_blend(voice) else None
        except ValueError as exc:
            raise InvalidRequest(f"voice: {exc}", param="voice") from None
        if parts is None:
            return self._styles[self._name(voice)], self._name(voice)
        style = sum(self._styles[self._name(p.voice)] * np.float32(p.weight) for p in parts)
        return style.astype(np.float32), self._name(parts[0].voice)

    def _name(self, voice: str) -> str:
        name = OPENAI_TO_KOKORO.get(voice.lower(), voice.lower())
        if name not in self._styles:
            raise InvalidRequest(f"voice: unknown voice {voice!r}; valid voices: {', '.join(self._styles)}",
                                 param="voice")
        return name

    def _speak(self, text: str, settings: _Settings) -> bytes:
        """The sentence's phonemes in batches the model takes (510 at most), each spoken with the style row
        for its length, its edges' silence trimmed and the pause its punctuation calls for put after it.
        The model's own `speed` input, so any speed the API takes goes (kokoro-onnx's `create` takes
        0.5 to 2)."""
        from kokoro_onnx.chunker import pause_after, split_phonemes
        from kokoro_onnx.trim import trim

        phonemes = " ".join(self._tokenizer.phonemize(text, settings.espeak).split())
        pieces = []
        for batch in split_phonemes(phonemes) if phonemes else []:
            tokens = self._tokenizer.tokenize(batch)
            if not tokens:
                continue
            style = settings.style[min(len(tokens), len(settings.style)) - 1]
            audio = self._session.run(None, {self._tokens_input: np.array([[0, *tokens, 0]], dtype=np.int64),
                                             "style": style.astype(np.float32),
                                             "speed": np.array([settings.speed], dtype=np.float32)})[0].ravel()
            audio, _ = trim(audio)
            pause = pause_after(batch, SENTENCE_PAUSE, CLAUSE_PAUSE)
            pieces += [audio, np.zeros(int(pause * SAMPLE_RATE), dtype=np.float32)]
        return to_pcm16(np.concatenate(pieces)) if pieces else b""
