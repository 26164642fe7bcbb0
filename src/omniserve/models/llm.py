"""Preset graph for a chat LLM with optional speech and vision stages:

    asr(whisper)       ─┐
                        ├─> thinker(llamacpp) ⇢ talker(piper), talker_kokoro(kokoro)
    vision(describer)  ─┘

The thinker does templating, tokenization and detokenization itself (it owns
the vocabulary). `asr` turns audio parts into text before the thinker runs,
`vision` does the same for images and video frames (or, with `--mmproj`,
turns them into the multimodal model's own embeddings: images, and audio too when
the projector hears, and then `asr` is off chat routes); `talker` speaks the
thinker's text as it streams (⇢: a streaming edge). Each request picks its
route through the graph: a transcription visits `asr` alone, speech
`talker` alone, a question about a photo `vision` and `thinker`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omniserve.config import ServerArgs
from omniserve.errors import ConfigError
from omniserve.models.image_gen import DIFFUSION_STAGES, ImageModel
from omniserve.models.minilm import ALIASES as EMBEDDING_ALIASES
from omniserve.models.minilm import SERVED_ID as EMBEDDING_ID
from omniserve.models.minilm import embedding_stage_on
from omniserve.models.qwen_omni import is_hub_id
from omniserve.models.speaker_export import ALIAS as SPEAKER_ID
from omniserve.models.speaker_export import resolve_speaker_model
from omniserve.models.speech import ASR_OPENAI_NAMES, SpeechModel, TtsModel
from omniserve.models.vision import VisionModel


def served_model_ids(settings: ServerArgs) -> list[str]:
    """The ids the chat model answers to: --served-model-name, else its hub id or file name."""
    if settings.served_model_name:
        return list(settings.served_model_name)
    if settings.model_path and is_hub_id(settings.model_path):
        return [settings.model_path]  # as clients of sglang-omni and vLLM-Omni name it
    name = Path(settings.model_path or "smollm2-135m").name
    return [name.removesuffix(".gguf")]


def lora_paths(specs: list[str]) -> dict[str, str]:
    """`--lora-paths NAME=PATH ...` (a bare PATH is named after its file) -> {name: absolute path}."""
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"--lora-paths {spec}: no such file")
        out[name] = str(file.resolve())
    return out


def omni_pipeline(gguf_path: str, settings: ServerArgs, asr: SpeechModel | None, tts: list[TtsModel],
                  vision: VisionModel | None = None, image: ImageModel | None = None) -> dict[str, Any]:
    threads = settings.resolved_threads()
    args: dict[str, Any] = {"model_path": gguf_path, "threads": threads,
                            "max_sequences": settings.max_running_requests}
    if settings.context_length:
        args["context_length"] = settings.context_length
    if settings.disable_radix_cache:
        args["prefix_cache"] = False
    if settings.lora_paths:
        args["lora_paths"] = lora_paths(settings.lora_paths)
    stages: list[dict[str, Any]] = [{"name": "thinker", "executor": "llamacpp", "args": args,
                                     "serves": [{"ids": served_model_ids(settings), "kind": "chat"}]}]
    edges: list[dict[str, Any]] = []
    hears = vision is not None and "audio" in vision.media  # the thinker hears through its own encoder
    if asr is not None:
        stages.insert(0, {"name": "asr", "executor": "whisper", "args": {"model_path": asr.path, "threads": threads},
                          "serves": [{"ids": [asr.id], "kind": "asr", "aliases": list(ASR_OPENAI_NAMES)}]})
        if not hears:  # (transcriptions still have it)
            edges.append({"src": "asr", "dst": "thinker"})
    if vision is not None:
        vision_args = ({"classifier_path": vision.path} if vision.executor == "describer"
                       else {"model_path": gguf_path, "mmproj_path": vision.path,
                             "context_length": args.get("context_length")})
        stages.insert(len(stages) - 1, {"name": "vision", "executor": vision.executor,
                                        "args": {**vision_args, "threads": threads},
                                        "serves": [{"ids": [vision.id], "kind": "vision"}]})
        edges.append({"src": "vision", "dst": "thinker"})
    for name, model in zip(talker_names(tts), tts, strict=True):
        stages.append({"name": name, "executor": model.executor, "args": {**model.args, "threads": threads},
                       "serves": [{"ids": [model.id], "kind": "tts", "aliases": model.aliases}]})
        edges.append({"src": "thinker", "dst": name, "streaming": True})
    speaker = resolve_speaker_model(settings.speaker_model, settings.data_dir, make=False,
                                    explicit="speaker_model" in settings.model_fields_set)
    if speaker is not None and asr is not None and tts:
        # the voice library's speaker embeddings, a stage of its own (a consent is checked by speech to text
        # too, and voices are for the voice models)
        stages.append({"name": "speaker", "executor": "speaker_encoder", "args": {"model_path": str(speaker),
                                                                                "threads": 1},
                       "serves": [{"ids": [SPEAKER_ID], "kind": "speaker"}]})
    side = side_stages(settings, image)
    return {"stages": stages + side["stages"], "edges": edges + side["edges"]}


def talker_names(models: list[TtsModel]) -> list[str]:
    """`talker` for the first voice model, `talker_<executor>` for others (`talker_<n>` if that is taken)."""
    names: list[str] = []
    for i, model in enumerate(models):
        name = "talker" if i == 0 else f"talker_{model.executor}"
        names.append(f"talker_{i + 1}" if name in names else name)
    return names


def side_stages(settings: ServerArgs, image: ImageModel | None) -> dict[str, Any]:
    """The stages beside the chat model that requests visit alone: image generation and embeddings."""
    threads = settings.resolved_threads()
    stages: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    if image is not None and image.executor == "diffusers":  # text encoder -> denoiser -> VAE decoder
        names = DIFFUSION_STAGES
        # the denoiser loop is the heavy part; the text encoder and the VAE run once a request, on one
        # thread each, so three busy torch stages do not fight over the cores (with --threads each, tiny
        # Wan made 0.4x the images/s with 4 clients as with 1)
        for name, executor in zip(names, ("diffusers_text_encoder", "diffusers_denoiser", "diffusers_vae"),
                                  strict=True):
            stage_threads = threads if executor == "diffusers_denoiser" else 1
            stages.append({"name": name, "executor": executor,
                           "args": {"model_path": image.path, "threads": stage_threads}})
        # the VAE decoder, last of the three, stands for them in /v1/models
        stages[-1]["serves"] = [{"ids": [image.id], "kind": "image", "entry": names[0],
                                 "facts_from": {names[1]: ["lora"]}, "lora_stage": names[1]}]
        edges += [{"src": names[0], "dst": names[1]}, {"src": names[1], "dst": names[2]}]
    elif image is not None:  # a stage of its own: image requests visit it alone
        image_args = {"model_path": image.path}
        if settings.strict_image_prompts:
            image_args["strict_prompts"] = True
        stages.append({"name": "image", "executor": image.executor, "args": image_args,
                       "serves": [{"ids": [image.id], "kind": "image"}]})
    if embedding_stage_on(settings.embedding_model):  # a stage of its own too
        stages.append({"name": "embedder", "executor": "embedder", "args": {"threads": 1},
                       "serves": [{"ids": [EMBEDDING_ID], "kind": "embedding", "aliases": list(EMBEDDING_ALIASES)}]})
    return {"stages": stages, "edges": edges}
