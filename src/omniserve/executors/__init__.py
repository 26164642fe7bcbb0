"""Executor registry: one `ExecutorSpec` per executor, naming its class and argument models (imported lazily,
so validating a config does not load a model runtime) and what it reads, makes and takes on graph edges.

A stage's `executor` may also name a class of its own by import path, `package.module:Class` (a custom stage, as
vLLM-Omni and sglang-omni allow), so a deployment or a test runs its own executor without a registry entry. Its
spec is made from the class (`_custom_spec`): that of the registered executor it subclasses, if any, so a subclass
that changes behaviour keeps its base's args, params and edges; and what the class declares itself as class
attributes wins: `args_model` and `params_model` (pydantic models), `reads`, `makes` and `takes_upstream`. A class
that subclasses no registered executor must declare `args_model`, and takes upstream outputs if it implements
`feed`. It is imported when the config is checked, so a path that does not name an `Executor` subclass stops the
start, naming the problem; each worker imports it again (on Ray, every node must be able to)."""

from __future__ import annotations

import functools
import importlib
import sys
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from omniserve.executors.base import Executor


@dataclass(frozen=True)
class ExecutorSpec:
    module: str
    # Each of the next three names an attribute of `module`, or gives its own import path ("pkg.mod:Class.attr").
    executor: str  # the class
    args: str  # its load-time arguments model (a stage's `args`)
    params: str | None = None  # its per-request parameters model (`OmniRequest.params`), if it takes any
    reads: tuple[str, ...] = ()  # the media kinds it takes from a request itself ("audio", "image")
    makes: tuple[str, ...] = ()  # the outputs a caller may ask of it (`OmniRequest.output_modalities`)
    takes_upstream: bool = False  # it implements `feed`: an upstream stage's outputs on a graph edge

    def load(self, name: str):
        module, _, path = name.rpartition(":")
        return functools.reduce(getattr, path.split("."), importlib.import_module(module or self.module))

    def path(self, name: str) -> str:
        """`name` as an import path, valid in any spec."""
        return name if ":" in name else f"{self.module}:{name}"

    def defines(self, cls: type) -> bool:
        """Whether `cls` is this spec's class (its module is imported already, as the class exists)."""
        module = sys.modules.get(self.module)
        return module is not None and getattr(module, self.executor, None) is cls


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
    """A registered executor's spec, or a custom one's (`package.module:Class`); a ValueError says what is wrong."""
    if ":" in name:
        return _custom_spec(name)
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; known: {', '.join(known_executors())}, or a class of your "
                         "own by its import path, package.module:Class") from None


@functools.cache
def _custom_spec(path: str) -> ExecutorSpec:
    """The spec of the class at `path`: its registered base's, overridden by what the class declares."""
    cls = _executor_class(path)
    _check_declared(cls, path)
    base = next((s for parent in cls.__mro__ for s in _SPECS.values() if s.defines(parent)), None)

    def declared(attr: str, inherited: Any) -> Any:
        return getattr(cls, attr) if hasattr(cls, attr) else inherited

    def model(attr: str, inherited: str | None) -> str | None:
        return f"{path}.{attr}" if hasattr(cls, attr) else (base.path(inherited) if base and inherited else None)

    args = model("args_model", base and base.args)
    if args is None:
        raise ValueError(f"executor {path!r} subclasses no registered executor, so it must declare `args_model`: "
                         "the pydantic model of its stage's args")
    return ExecutorSpec(path.partition(":")[0], path, args, model("params_model", base and base.params),
                        reads=tuple(declared("reads", base.reads if base else ())),
                        makes=tuple(declared("makes", base.makes if base else ())),
                        takes_upstream=bool(declared("takes_upstream", base.takes_upstream if base
                                                     else cls.feed is not Executor.feed)))


def _check_declared(cls: type, path: str) -> None:
    """What a custom class declares has the right type, so a mistake stops the start naming it."""
    for attr in ("args_model", "params_model"):
        value = getattr(cls, attr, None)
        if hasattr(cls, attr) and not (value is None and attr == "params_model") and not (
                isinstance(value, type) and issubclass(value, BaseModel)):
            raise ValueError(f"executor {path!r}: its `{attr}` must be a pydantic model class")
    for attr in ("reads", "makes"):
        value = getattr(cls, attr, ())
        if isinstance(value, str) or not all(isinstance(kind, str) for kind in value):
            raise ValueError(f"executor {path!r}: its `{attr}` must be a tuple of kinds, such as (\"text\",)")


def _executor_class(path: str) -> type[Executor]:
    module_name, _, name = path.partition(":")
    if not module_name or not name:
        raise ValueError(f"executor {path!r}: give a class by its import path, package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"executor {path!r}: no module named {exc.name!r} (is it installed, or on PYTHONPATH?)"
                         ) from None
    except Exception as exc:  # the module's own code failed: say so rather than stop with a traceback
        raise ValueError(f"executor {path!r}: importing {module_name} failed ({type(exc).__name__}: {exc})"
                         ) from None
    try:
        cls = functools.reduce(getattr, name.split("."), module)
    except AttributeError:
        raise ValueError(f"executor {path!r}: module {module_name} has no {name!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise ValueError(f"executor {path!r} is not an Executor subclass (omniserve.executors.base.Executor)")
    return cls


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
