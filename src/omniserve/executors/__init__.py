"""Executor registry: name -> (class, validated argument model).

Modules are imported lazily so validating a config does not load a model
runtime.
"""

from __future__ import annotations

import importlib

from pydantic import BaseModel

# name -> (module, executor class, load-time args model, per-request params model or None)
_EXECUTORS = {
    "llamacpp": ("omniserve.executors.llamacpp", "LlamaCppExecutor", "LlamaCppArgs", "EmbeddingParams"),
    "whisper": ("omniserve.executors.whisper", "WhisperExecutor", "WhisperArgs", "AsrParams"),
    "piper": ("omniserve.executors.piper", "PiperExecutor", "PiperArgs", "SpeechParams"),
    "kokoro": ("omniserve.executors.kokoro", "KokoroExecutor", "KokoroArgs", "SpeechParams"),
    "pocket_tts": ("omniserve.executors.pocket_tts", "PocketTtsExecutor", "PocketTtsArgs", "ClonedSpeechParams"),
    "pocket_tts_gguf": ("omniserve.executors.pocket_tts_gguf", "PocketTtsGgufExecutor", "PocketTtsGgufArgs",
                        "ClonedSpeechParams"),
    "qwen3_tts_gguf": ("omniserve.executors.qwen3_tts_gguf", "Qwen3TtsGgufExecutor", "Qwen3TtsGgufArgs",
                       "ClonedSpeechParams"),
    "speaker_encoder": ("omniserve.executors.speaker_encoder", "SpeakerEncoderExecutor", "SpeakerEncoderArgs", None),
    "describer": ("omniserve.executors.describer", "DescriberExecutor", "DescriberArgs", None),
    "mtmd": ("omniserve.executors.mtmd_encoder", "MtmdEncoderExecutor", "MtmdArgs", None),
    "embedder": ("omniserve.executors.onnx_embed", "EmbedderExecutor", "EmbedderArgs", "EmbeddingParams"),
    "sketch_rnn": ("omniserve.executors.sketch_rnn", "SketchRnnExecutor", "SketchRnnArgs", "ImageParams"),
    "diffusers_text_encoder": ("omniserve.executors.diffusers_stages", "DiffusersTextEncoderExecutor",
                               "DiffusersArgs", "DiffusionParams"),
    "diffusers_denoiser": ("omniserve.executors.diffusers_stages", "DiffusersDenoiserExecutor", "DiffusersArgs",
                           "DiffusionParams"),
    "diffusers_vae": ("omniserve.executors.diffusers_stages", "DiffusersDecoderExecutor", "DiffusersArgs",
                      "DiffusionParams"),
    "qwen_omni_thinker": ("omniserve.executors.qwen_omni.thinker", "QwenOmniThinkerExecutor", "ThinkerArgs", None),
    "qwen_omni_talker": ("omniserve.executors.qwen_omni.talker", "QwenOmniTalkerExecutor", "TalkerArgs",
                         "VoiceParams"),
    "qwen_omni_code2wav": ("omniserve.executors.qwen_omni.code2wav", "QwenOmniCode2WavExecutor", "Code2WavArgs",
                           "VoiceParams"),
    "qwen3_omni_talker": ("omniserve.executors.qwen_omni.qwen3_talker", "Qwen3OmniTalkerExecutor", "TalkerArgs",
                          "VoiceParams"),
    "qwen3_omni_code2wav": ("omniserve.executors.qwen_omni.qwen3_code2wav", "Qwen3OmniCode2WavExecutor",
                            "Code2WavArgs", "VoiceParams"),
}


# What each executor reads of a request's media, and what it makes that a caller may ask for
# (`OmniRequest.output_modalities`): the runtime plans a request's route through the graph from these.
_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "llamacpp": ((), ("text", "embedding")),
    "whisper": (("audio",), ("text",)),
    "piper": ((), ("audio",)),
    "kokoro": ((), ("audio",)),
    "pocket_tts": ((), ("audio",)),
    "pocket_tts_gguf": ((), ("audio",)),
    "qwen3_tts_gguf": ((), ("audio",)),
    "speaker_encoder": (("audio",), ("embedding",)),
    "describer": (("image",), ("text",)),
    "mtmd": (("image", "audio"), ()),  # image and audio embeddings, for the thinker only (audio: if it hears)
    "embedder": ((), ("embedding",)),
    "sketch_rnn": (("image",), ("image", "video")),
    "diffusers_text_encoder": ((), ()),
    "diffusers_denoiser": (("image",), ()),  # a reference image (edits, image to video)
    "diffusers_vae": ((), ("image", "video")),
    "qwen_omni_thinker": (("audio", "image"), ("text",)),
    "qwen_omni_talker": ((), ()),
    "qwen_omni_code2wav": ((), ("audio",)),
    "qwen3_omni_talker": ((), ()),
    "qwen3_omni_code2wav": ((), ("audio",)),
}


def reads(name: str) -> tuple[str, ...]:
    """The media kinds ("audio", "image") an executor takes from a request itself."""
    return _IO[name][0]


def makes(name: str) -> tuple[str, ...]:
    """The outputs ("text", "audio", "image", "video", "embedding") an executor makes for the caller."""
    return _IO[name][1]


# Executors that implement `feed` (take an upstream stage's outputs on a graph edge).
_TAKES_UPSTREAM: set[str] = {"llamacpp", "piper", "kokoro", "pocket_tts", "pocket_tts_gguf", "qwen3_tts_gguf",
                              "diffusers_denoiser", "diffusers_vae", "qwen_omni_talker", "qwen_omni_code2wav",
                              "qwen3_omni_talker", "qwen3_omni_code2wav"}


def takes_upstream(name: str) -> bool:
    return name in _TAKES_UPSTREAM


def known_executors() -> list[str]:
    return sorted(_EXECUTORS)


def _lookup(name: str, attr_index: int):
    try:
        entry = _EXECUTORS[name]
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; known: {', '.join(known_executors())}") from None
    if entry[attr_index] is None:
        return None
    return getattr(importlib.import_module(entry[0]), entry[attr_index])


def request_params_model(name: str) -> type[BaseModel] | None:
    """What a request may set for a stage of this executor (`OmniRequest.params`), if anything.
    LLM stages take sampling parameters in `OmniRequest.sampling`; their params are an embedding request's."""
    return _lookup(name, 3)


def executor_args_model(name: str) -> type[BaseModel]:
    return _lookup(name, 2)


def create_executor(name: str, args: dict, stage: str):
    """`stage` is the executor's stage name: the key of its settings in `OmniRequest.params`/`sampling`."""
    cls = _lookup(name, 1)
    return cls(executor_args_model(name).model_validate(args), stage=stage)
