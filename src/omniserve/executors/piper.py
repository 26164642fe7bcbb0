"""Text to speech with a Piper voice (VITS, ONNX): one voice, English, 22.05 kHz, and fast (a sentence in
tens of milliseconds on a CPU). How text becomes sentences and requests take turns is `SentenceSpeaker`'s."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from omniserve.errors import InvalidRequest
from omniserve.executors.sentence_speech import SentenceSpeaker, SpeechParams, to_pcm16
from omniserve.onnx_cpu import cpu_session
from omniserve.runtime.facts import StageFacts, VoiceDetail
from omniserve.voices import OPENAI_VOICES, language_tag

__all__ = ["PiperArgs", "PiperExecutor", "SpeechParams"]


class PiperArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str
    config_path: str | None = None  # default: model_path + ".json"
    voice: str | None = None  # the voice's name in /v1/audio/voices (default: the file name)
    threads: int = Field(2, ge=1)


@dataclass(frozen=True)
class _Settings:
    config: Any  # piper SynthesisConfig


class PiperExecutor(SentenceSpeaker):
    def __init__(self, args: PiperArgs, stage: str = "talker"):
        super().__init__(args, stage)

    def load(self) -> StageFacts:
        from piper import PiperVoice
        from piper.config import PiperConfig

        model = Path(self.args.model_path)
        config_path = Path(self.args.config_path or f"{model}.json")
        self._voice = PiperVoice(
            session=cpu_session(model, self.args.threads),
            config=PiperConfig.from_dict(json.loads(config_path.read_text())),
        )
        self.sample_rate = self._voice.config.sample_rate
        self.voice_name = self.args.voice or model.name.removesuffix(".onnx")
        self.language = language_tag(self._voice.config.espeak_voice) or self._voice.config.espeak_voice
        return StageFacts(model_path=str(model), sample_rate=self.sample_rate, voices=[self.voice_name],
                          voice_details={self.voice_name: VoiceDetail(language=self.language)},
                          # every OpenAI name speaks with the one voice
                          openai_voices=dict.fromkeys(OPENAI_VOICES, self.voice_name))

    def _settings(self, params: SpeechParams) -> _Settings:
        from piper.config import SynthesisConfig

        if params.voice not in (None, self.voice_name):
            raise InvalidRequest(f"voice: unknown voice {params.voice!r}; this stage has {self.voice_name!r}",
                                 param="voice")
        asked = language_tag(params.language) if params.language else None
        if params.language and (asked is None or asked.split("-")[0] != self.language.split("-")[0]):
            raise InvalidRequest(f"language: the voice {self.voice_name} speaks {self.language} only",
                                 param="language")
        return _Settings(SynthesisConfig(length_scale=self._voice.config.length_scale / params.speed,
                                         noise_scale=params.noise_scale, noise_w_scale=params.noise_w_scale))

    def _speak(self, text: str, settings: _Settings) -> bytes:
        import numpy as np

        pieces = []
        for phonemes in self._voice.phonemize(text):
            if phonemes:
                audio = self._voice.phoneme_ids_to_audio(self._voice.phonemes_to_ids(phonemes), settings.config)
                peak = float(np.max(np.abs(audio))) if audio.size else 0.0
                pieces.append(audio / peak if peak > 1e-8 else audio)
        return to_pcm16(np.concatenate(pieces)) if pieces else b""
