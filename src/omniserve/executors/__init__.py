"""Executor registry: one `ExecutorSpec` per executor, naming its class and argument models (imported lazily,
so validating a config does not load a model runtime) and what it reads, makes and takes on graph edges."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from pydantic import BaseModel


@dataclass(frozen=True)
class ExecutorSpec:
    module: str
    executor: str  # the class, in `module`
    args: str  # its load-time arguments model (a stage's `args`)
    params: str | None = None  # its per-request parameters model (`OmniRequest.params`), if it takes any
    reads: tuple[str, ...] = ()  # the media kinds it takes from a request itself ("audio", "image")
    makes: tuple[str, ...] = ()  # the outputs a caller may ask of it (`OmniRequest.output_modalities`)
    takes_upstream: bool = False  # it implements `feed`: an upstream stage's outputs on a graph edge

    def load(self, attr: str):
        return getattr(importlib.import_module(self.module), attr)


_SPEECH = dict(makes=("audio",), takes_upstream=True)
_DIFFUSERS = "omniserve.executors.diffusers_stages"
_QWEN = "omniserve.executors.qwen_omni"

_SPECS: dict[str, ExecutorSpec] = {
    "llamacpp": ExecutorSpec("omniserve.executors.llamacpp", "LlamaCppExecutor", "LlamaCppArgs", "EmbeddingParams",
                             makes=("text", "embedding"), takes_upstream=True),
    "whisper": ExecutorSpec("omniserve.executors.whisper", "WhisperExecutor", "WhisperArgs", "AsrParams",
                            reads=("audio",), makes=("text",)),
    "piper": ExecutorSpec("omniserve.executors.piper", "PiperExecutor", "PiperArgs", "SpeechParams", **_SPEECH),
    "kokoro": ExecutorSpec("omniserve.executors.kokoro", "KokoroExecutor", "KokoroArgs", "SpeechParams", **_SPEECH),
    "pocket_tts": ExecutorSpec("omniserve.executors.pocket_tts", "PocketTtsExecutor", "PocketTtsArgs",
                               "ClonedSpeechParams", **_SPEECH),
    "pocket_tts_gguf": ExecutorSpec("omniserve.executors.pocket_tts_gguf", "PocketTtsGgufExecutor",
                                    "PocketTtsGgufArgs", "ClonedSpeechParams", **_SPEECH),
    "qwen3_tts_gguf": ExecutorSpec("omniserve.executors.qwen3_tts_gguf", "Qwen3TtsGgufExecutor", "Qwen3TtsGgufArgs",
                                   "ClonedSpeechParams", **_SPEECH),
    "speaker_encoder": ExecutorSpec("omniserve.executors.speaker_encoder", "SpeakerEncoderExecutor",
                                    "SpeakerEncoderArgs", reads=("audio",), makes=("embedding",)),
    "describer": ExecutorSpec("omniserve.executors.describer", "DescriberExecutor", "DescriberArgs",
                              reads=("image",), makes=("text",)),
    # image and audio embeddings, for the thinker only (audio: if it hears)
    "mtmd": ExecutorSpec("omniserve.executors.mtmd_encoder", "MtmdEncoderExecutor", "MtmdArgs",
                         reads=("image", "audio")),
    "embedder": ExecutorSpec("omniserve.executors.onnx_embed", "EmbedderExecutor", "EmbedderArgs", "EmbeddingParams",
                             makes=("embedding",)),
    "sketch_rnn": ExecutorSpec("omniserve.executors.sketch_rnn", "SketchRnnExecutor", "SketchRnnArgs", "ImageParams",
                               reads=("image",), makes=("image", "video")),
    "diffusers_text_encoder": ExecutorSpec(_DIFFUSERS, "DiffusersTextEncoderExecutor", "DiffusersArgs",
                                           "DiffusionParams"),
    # a reference image (edits, image to video)
    "diffusers_denoiser": ExecutorSpec(_DIFFUSERS, "DiffusersDenoiserExecutor", "DiffusersArgs", "DiffusionParams",
                                       reads=("image",), takes_upstream=True),
    "diffusers_vae": ExecutorSpec(_DIFFUSERS, "DiffusersDecoderExecutor", "DiffusersArgs", "DiffusionParams",
                                  makes=("image", "video"), takes_upstream=True),
    "qwen_omni_thinker": ExecutorSpec(f"{_QWEN}.thinker", "QwenOmniThinkerExecutor", "ThinkerArgs",
                                      reads=("audio", "image"), makes=("text",)),
    "qwen_omni_talker": ExecutorSpec(f"{_QWEN}.talker", "QwenOmniTalkerExecutor", "TalkerArgs", "VoiceParams",
                                     takes_upstream=True),
    "qwen_omni_code2wav": ExecutorSpec(f"{_QWEN}.code2wav", "QwenOmniCode2WavExecutor", "Code2WavArgs",
                                       "VoiceParams", **_SPEECH),
    "qwen3_omni_talker": ExecutorSpec(f"{_QWEN}.qwen3_talker", "Qwen3OmniTalkerExecutor", "TalkerArgs",
                                      "VoiceParams", takes_upstream=True),
    "qwen3_omni_code2wav": ExecutorSpec(f"{_QWEN}.qwen3_code2wav", "Qwen3OmniCode2WavExecutor", "Code2WavArgs",
                                        "VoiceParams", **_SPEECH),
}


def spec(name: str) -> ExecutorSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; known: {', '.join(known_executors())}") from None


def reads(name: str) -> tuple[str, ...]:
    """The media kinds ("audio", "image") an executor takes from a request itself."""
    return spec(name).reads


def makes(name: str) -> tuple[str, ...]:
    """The outputs ("text", "audio", "image", "video", "embedding") an executor makes for the caller."""
    return spec(name).makes


def takes_upstream(name: str) -> bool:
    return spec(name).takes_upstream


def known_executors() -> list[str]:
    return sorted(_SPECS)


def request_params_model(name: str) -> type[BaseModel] | None:
    """What a request may set for a stage of this executor (`OmniRequest.params`), if anything.
    LLM stages take sampling parameters in `OmniRequest.sampling`; their params are an embedding request's."""
    s = spec(name)
    return s.load(s.params) if s.params else None


def executor_args_model(name: str) -> type[BaseModel]:
    s = spec(name)
    return s.load(s.args)


def create_executor(name: str, args: dict, stage: str):
    """`stage` is the executor's stage name: the key of its settings in `OmniRequest.params`/`sampling`."""
    s = spec(name)
    return s.load(s.executor)(executor_args_model(name).model_validate(args), stage=stage)
